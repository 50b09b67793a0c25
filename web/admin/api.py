"""`/admin/api/*`: the console's JSON twins (CONTRACT §8), for an admin's bearer token.

Each route is one call of the `services.ops` function the CLI calls, and answers the view's
`dump()`, so a twin's JSON is byte for byte the shape `--json` prints (absent optional
fields omitted, not `null`). Actions are audited with the admin's email as the actor. No
token or a bad one is 401, a non-admin 403, bad input 422; every list is one page
(`limit` 1..1000).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

import redis
import structlog
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from db.models import OrderStatus, SyncKind, SyncStatus
from services.ops import audit, jobs, order_timeline, stuck_orders, syncs, webhook_inbox
from services.ops.errors import MAX_LIMIT
from services.ops.schemas import (
    AdminActionList,
    DiscardResult,
    InboxOutcome,
    JobList,
    JobState,
    OrderOpsList,
    OrderTimeline,
    ReplayResult,
    RetryResult,
    StatusReport,
    SyncChart,
    SyncsView,
    View,
    WebhookList,
)
from web.admin.deps import BearerAdminDep, status_report
from web.deps import ResourcesDep, SessionDep
from web.errors import error_responses

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/admin/api", tags=["admin"],
                   responses=error_responses(400, 401, 403, 422, 503))

MAX_IDS = 1000
# Large enough for any real page, small enough for Postgres' OFFSET and Redis ranges.
MAX_OFFSET = 1_000_000_000

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]


class RepairRequest(BaseModel):
    """Dead letters to retry or discard: `ids`, or `all` (of `actor`, if given)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(default_factory=list, max_length=MAX_IDS)
    all: bool = False
    actor: str | None = Field(default=None, max_length=200)


class ReplayRequest(BaseModel):
    """Webhook events to replay: `event_ids`, or every `dead` one."""

    model_config = ConfigDict(extra="forbid")

    event_ids: list[str] = Field(default_factory=list, max_length=MAX_IDS)
    dead: bool = False


def _json(view: View) -> JSONResponse:
    return JSONResponse(view.dump())


@router.get("/overview", response_model=StatusReport)
def overview(_: BearerAdminDep, resources: ResourcesDep) -> JSONResponse:
    """What `keysync status --json` prints."""
    return JSONResponse(status_report(resources))


@router.get("/jobs", response_model=JobList)
def list_jobs(_: BearerAdminDep, resources: ResourcesDep, state: JobState | None = None,
              actor: Annotated[str | None, Query(max_length=200)] = None,
              limit: Limit = 50, offset: Offset = 0) -> JSONResponse:
    return _json(jobs.list_jobs(resources.broker.client, state=state, actor=actor,
                                limit=limit, offset=offset))


@router.post("/jobs/retry", response_model=RetryResult)
def retry_jobs(admin: BearerAdminDep, resources: ResourcesDep,
               body: RepairRequest) -> JSONResponse:
    return _json(jobs.retry(resources.sessions, resources.broker.client, actor=admin.email,
                            ids=body.ids, all_=body.all, actor_filter=body.actor))


@router.post("/jobs/discard", response_model=DiscardResult)
def discard_jobs(admin: BearerAdminDep, resources: ResourcesDep,
                 body: RepairRequest) -> JSONResponse:
    return _json(jobs.discard(resources.sessions, resources.broker.client, actor=admin.email,
                              ids=body.ids, all_=body.all, actor_filter=body.actor))


@router.get("/syncs", response_model=SyncsView)
def list_syncs(_: BearerAdminDep, resources: ResourcesDep, session: SessionDep,
               kind: SyncKind | None = None, status: SyncStatus | None = None,
               limit: Limit = 50, offset: Offset = 0) -> JSONResponse:
    """A page of runs, newest first, and the run in progress (`null` when none)."""
    now = datetime.now(UTC)
    runs = syncs.list_runs(session, kind=kind, status=status, limit=limit, offset=offset,
                           now=now)
    try:
        running = syncs.running(session, resources.redis, now=now)
    except redis.RedisError as exc:
        # The history is Postgres's; without Redis only the live progress is missing.
        log.warning("sync progress unreadable", error=str(exc))
        running = None
    return _json(SyncsView(items=runs.items, total=runs.total, running=running))


@router.get("/syncs/chart", response_model=SyncChart)
def sync_chart(_: BearerAdminDep, session: SessionDep,
               days: Annotated[int, Query(ge=1, le=syncs.MAX_DAYS)] = 30) -> JSONResponse:
    return _json(syncs.chart(session, now=datetime.now(UTC), days=days))


@router.get("/webhooks", response_model=WebhookList)
def list_webhooks(_: BearerAdminDep, session: SessionDep, outcome: InboxOutcome | None = None,
                  limit: Limit = 50, offset: Offset = 0) -> JSONResponse:
    return _json(webhook_inbox.list_events(session, outcome=outcome, limit=limit,
                                           offset=offset))


@router.post("/webhooks/replay", response_model=ReplayResult)
def replay_webhooks(admin: BearerAdminDep, resources: ResourcesDep,
                    body: ReplayRequest) -> JSONResponse:
    return _json(webhook_inbox.replay(resources.sessions, resources.broker, actor=admin.email,
                                      event_ids=body.event_ids, dead=body.dead))


@router.get("/orders", response_model=OrderOpsList)
def list_orders(_: BearerAdminDep, resources: ResourcesDep, session: SessionDep,
                status: OrderStatus | None = None, stuck: bool = False,
                limit: Limit = 50, offset: Offset = 0) -> JSONResponse:
    return _json(stuck_orders.list_orders(
        session, status=status, stuck=stuck,
        stuck_after_s=resources.settings.order_stuck_after_s, limit=limit, offset=offset,
        broker_redis=resources.broker.client,
    ))


@router.get("/orders/{order_id}", response_model=OrderTimeline,
            responses=error_responses(404))
def order_detail(_: BearerAdminDep, resources: ResourcesDep, session: SessionDep,
                 order_id: uuid.UUID) -> JSONResponse:
    """The order's timeline: transactions, G2A purchases, webhook events (never a key)."""
    return _json(order_timeline.timeline(session, order_id,
                                         broker_redis=resources.broker.client))


@router.get("/audit", response_model=AdminActionList)
def list_audit(_: BearerAdminDep, session: SessionDep, limit: Limit = 50,
               offset: Offset = 0) -> JSONResponse:
    return _json(audit.list_actions(session, limit=limit, offset=offset))
