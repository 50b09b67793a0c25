"""`/admin`: the console's pages (CONTRACT §8), for an admin signed in with a cookie.

One template per page, one partial per live fragment (`/admin/fragments/*`, polled by
htmx every few seconds; the first paint is the same partial, server-rendered, so every
page reads with JavaScript off). Each route reads through one `services.ops` function.
Sign-in is `login`, the state-changing forms are `actions`.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Query, Request
from starlette.responses import FileResponse, Response

from db.models import OrderStatus
from keysync.resources import Resources
from services.ops import audit, jobs, stuck_orders, syncs, webhook_inbox
from services.ops.order_timeline import timeline
from services.ops.schemas import InboxOutcome, JobState
from services.orders.errors import OrderNotFound
from web.admin import actions, charts, login, render
from web.admin.deps import status_report
from web.admin.session import Admin, AdminDep, ConsoleRoute
from web.deps import ResourcesDep

router = APIRouter(prefix="/admin", include_in_schema=False, route_class=ConsoleRoute)
router.include_router(login.router)
router.include_router(actions.router)

PAGE_SIZE = 50
PageDep = Annotated[int, Query(ge=1, le=100_000)]
# The only files served under /admin/static (a router cannot mount StaticFiles).
STATIC = {"console.css": "text/css", "htmx.min.js": "text/javascript",
          "htmx.LICENSE": "text/plain"}


def _pages(total: int) -> int:
    return max(1, math.ceil(total / PAGE_SIZE))


def _offset(page: int) -> int:
    return (page - 1) * PAGE_SIZE


def _page(request: Request, admin: Admin, section: str, name: str,
          context: dict[str, Any]) -> Response:
    return render.page(request, name, {"admin": admin, "section": section,
                                       **actions.flash(request), **context})


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(render.HERE / "static" / name, media_type=STATIC[name],
                        headers={"Cache-Control": "public, max-age=3600"})


# --- overview ----------------------------------------------------------------------------


@router.get("")
def overview(request: Request, admin: AdminDep, resources: ResourcesDep) -> Response:
    return _page(request, admin, "overview", "overview.html",
                 {"report": status_report(resources)})


@router.get("/fragments/overview")
def overview_fragment(request: Request, _: AdminDep, resources: ResourcesDep) -> Response:
    return render.page(request, "_overview.html", {"report": status_report(resources)})


# --- jobs --------------------------------------------------------------------------------


@router.get("/jobs")
def jobs_page(request: Request, admin: AdminDep, resources: ResourcesDep,
              state: JobState = JobState.DEAD,
              actor: Annotated[str, Query(max_length=200)] = "", page: PageDep = 1) -> Response:
    found = jobs.list_jobs(resources.broker.client, state=state, actor=actor.strip() or None,
                           limit=PAGE_SIZE, offset=_offset(page))
    return _page(request, admin, "jobs", "jobs.html", {
        "jobs": found, "state": state.value, "actor": actor.strip(), "page": page,
        "pages": _pages(found.total)})


# --- syncs -------------------------------------------------------------------------------


def _running(resources: Resources, now: datetime) -> dict[str, Any]:
    with resources.sessions() as session:
        try:
            return {"running": syncs.running(session, resources.redis, now=now)}
        except redis.RedisError:
            return {"running": None, "running_error": "Redis cannot be read: progress unknown."}


@router.get("/syncs")
def syncs_page(request: Request, admin: AdminDep, resources: ResourcesDep,
               page: PageDep = 1) -> Response:
    now = datetime.now(UTC)
    with resources.sessions() as session:
        runs = syncs.list_runs(session, limit=PAGE_SIZE, offset=_offset(page), now=now)
        chart = syncs.chart(session, now=now)
    return _page(request, admin, "syncs", "syncs.html", {
        "runs": runs, "chart": chart, "svg": charts.sync_chart(chart, now=now), "page": page,
        "pages": _pages(runs.total), **_running(resources, now)})


@router.get("/fragments/syncs-running")
def running_fragment(request: Request, _: AdminDep, resources: ResourcesDep) -> Response:
    return render.page(request, "_sync_running.html", _running(resources, datetime.now(UTC)))


# --- webhooks ----------------------------------------------------------------------------


@router.get("/webhooks")
def webhooks_page(request: Request, admin: AdminDep, resources: ResourcesDep,
                  outcome: InboxOutcome | None = None, page: PageDep = 1) -> Response:
    with resources.sessions() as session:
        events = webhook_inbox.list_events(session, outcome=outcome, limit=PAGE_SIZE,
                                           offset=_offset(page))
    return _page(request, admin, "webhooks", "webhooks.html", {
        "events": events, "outcome": outcome.value if outcome else "", "page": page,
        "pages": _pages(events.total)})


@router.get("/webhooks/{event_id}")
def webhook_page(request: Request, admin: AdminDep, resources: ResourcesDep,
                 event_id: str) -> Response:
    with resources.sessions() as session:
        found = webhook_inbox.get_event(session, event_id)
    if found is None:
        return render.message(request, 404, "Not found", "No webhook event with this id.",
                              admin=admin)
    view, payload = found
    return _page(request, admin, "webhooks", "webhook.html",
                 {"event": view, "payload": payload})


# --- orders ------------------------------------------------------------------------------


@router.get("/orders")
def orders_page(request: Request, admin: AdminDep, resources: ResourcesDep,
                status: OrderStatus | None = None, stuck: bool = False,
                page: PageDep = 1) -> Response:
    stuck_after_s = resources.settings.order_stuck_after_s
    with resources.sessions() as session:
        found = stuck_orders.list_orders(
            session, status=None if stuck else status, stuck=stuck, stuck_after_s=stuck_after_s,
            limit=PAGE_SIZE, offset=_offset(page), broker_redis=resources.broker.client)
    return _page(request, admin, "orders", "orders.html", {
        "orders": found, "status": None if stuck or status is None else status.value,
        "stuck": stuck, "stuck_after_s": stuck_after_s, "statuses": [s.value for s in OrderStatus],
        "page": page, "pages": _pages(found.total)})


@router.get("/orders/{order_id}")
def order_page(request: Request, admin: AdminDep, resources: ResourcesDep,
               order_id: uuid.UUID) -> Response:
    with resources.sessions() as session:
        try:
            found = timeline(session, order_id, broker_redis=resources.broker.client)
        except OrderNotFound:
            return render.message(request, 404, "Not found", "No order with this id.",
                                  admin=admin)
    return _page(request, admin, "orders", "order.html", {"t": found})


# --- audit -------------------------------------------------------------------------------


@router.get("/audit")
def audit_page(request: Request, admin: AdminDep, resources: ResourcesDep,
               page: PageDep = 1) -> Response:
    with resources.sessions() as session:
        found = audit.list_actions(session, limit=PAGE_SIZE, offset=_offset(page))
    return _page(request, admin, "audit", "audit.html",
                 {"actions": found, "page": page, "pages": _pages(found.total)})
