"""The facts a snapshot is made of: one bounded read each, of Postgres or Redis.

Counts and maxima over indexed or small tables, a pipeline for the sync lock; each reader
raises when its source is down (`snapshot.gather` records that per section). Nothing here
writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypedDict

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import (
    CacheInvalidation,
    G2APurchase,
    G2APurchaseStatus,
    JobOutbox,
    Order,
    OrderStatus,
    SyncKind,
    SyncRun,
    SyncStatus,
    WebhookEvent,
)
from services.catalog import LOCK_HELD_DETAIL, REMOVAL_GUARD_DETAIL, SYNC_PROGRESS
from services.locks import SYNC_FENCE, SYNC_LOCK, holder_label
from services.webhooks.schemas import WebhookOutcome

# G2A's "not enough funds" refusal (CONTRACT §6), as fulfilment stores it in
# `g2a_purchases.last_error` (`G2AError`'s "{code}: {message}").
FUNDS_REFUSAL_PREFIX = "ORD112:"
# Outcomes of `webhook_events`; "pending" is an event not processed yet (no outcome).
WEBHOOK_OUTCOMES: tuple[str, ...] = ("pending", *(o.value for o in (
    WebhookOutcome.PROCESSED, WebhookOutcome.IGNORED, WebhookOutcome.ORPHAN, WebhookOutcome.DEAD)))
NON_TERMINAL = (OrderStatus.PENDING, OrderStatus.PROCESSING)


class SyncLockView(TypedDict):
    held: bool
    holder: str | None  # host:pid:<8 chars>, never the value that could release the lock
    host: str | None
    pid: int | None
    run_id: str | None
    ttl_ms: int | None
    fence: int | None
    progress: dict[str, str | int | float]


class RunView(TypedDict):
    run_id: str
    status: str
    started_at: str
    finished_at: str | None
    duration_s: float
    added: int
    updated: int
    unchanged: int
    removed: int
    errors: int
    pages: int
    requests: int
    error_detail: str | None


class RemovalGuardView(TypedDict):
    active: bool
    run_id: str | None
    since: str | None
    detail: str | None


@dataclass(frozen=True)
class Backlog:
    """Rows waiting in an outbox: how many and how long the oldest has waited."""

    pending: int
    oldest_s: float | None


@dataclass(frozen=True)
class WebhookInbox:
    by_outcome: dict[str, int]  # every WEBHOOK_OUTCOMES key
    oldest_pending_s: float | None
    oldest_orphan_s: float | None


@dataclass(frozen=True)
class StuckOrders:
    count: int
    oldest_s: float | None
    after_s: float


@dataclass(frozen=True)
class FundsState:
    """G2A refusals for lack of funds (ORD112) within the window, and whether no G2A order
    was paid after the last of them (then G2A is still refusing, as far as we know)."""

    refusals: int
    last_refusal_at: datetime | None
    last_paid_at: datetime | None

    @property
    def refusing(self) -> bool:
        return self.last_refusal_at is not None and (
            self.last_paid_at is None or self.last_paid_at < self.last_refusal_at)


def _age_s(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round(max((now - then).total_seconds(), 0.0), 1)


def backlog(session: Session, model: type[CacheInvalidation] | type[JobOutbox],
             now: datetime) -> Backlog:
    pending, oldest = session.execute(
        select(func.count(), func.min(model.created_at)).select_from(model)).one()
    return Backlog(int(pending), _age_s(now, oldest))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: str) -> str | int | float:
    """Progress values are stored as strings in a Redis hash; numbers go out as numbers."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def sync_lock(client: redis.Redis) -> SyncLockView:
    pipe = client.pipeline(transaction=False)
    pipe.get(SYNC_LOCK)
    pipe.pttl(SYNC_LOCK)
    pipe.get(SYNC_FENCE)
    pipe.hgetall(SYNC_PROGRESS)
    holder, ttl_ms, fence, raw_progress = pipe.execute()
    progress = {_text(k): _number(_text(v)) for k, v in raw_progress.items()}
    label = holder_label(holder)
    host = pid = None
    if label is not None and label.count(":") == 2:
        host, raw_pid, _ = label.split(":")
        pid = int(raw_pid)
    # The progress hash names the run its holder is doing (runs publish it as they go).
    running = holder is not None and progress.get("finished") == 0
    run_id = progress.get("run_id") if running else None
    return {
        "held": holder is not None,
        "holder": label,
        "host": host,
        "pid": pid,
        "run_id": str(run_id) if run_id else None,
        "ttl_ms": int(ttl_ms) if holder is not None and int(ttl_ms) >= 0 else None,
        "fence": int(fence) if fence is not None else None,
        "progress": progress,
    }


def _run_view(run: SyncRun, now: datetime) -> RunView:
    finished = run.finished_at
    return {
        "run_id": str(run.id),
        "status": run.status.value,
        "started_at": run.started_at.isoformat(),
        "finished_at": finished.isoformat() if finished else None,
        # A running sync reports how long it has been running so far.
        "duration_s": round(((finished or now) - run.started_at).total_seconds(), 3),
        "added": run.added,
        "updated": run.updated,
        "unchanged": run.unchanged,
        "removed": run.removed,
        "errors": run.errors,
        "pages": run.pages,
        "requests": run.requests,
        "error_detail": run.error_detail,
    }


def latest_runs(session: Session, now: datetime, *, finished: bool = False,
                 status: SyncStatus | None = None) -> dict[str, RunView | None]:
    """Per kind, the latest run (only finished ones, or only those of `status`).

    Finished excludes the rows of runs that never started because another held the sync
    lock (docs/sync.md): they say nothing about the catalog, and a run that keeps not
    starting shows as the last success getting old (and as a dead letter)."""
    result: dict[str, RunView | None] = {}
    for kind in SyncKind:
        query = select(SyncRun).where(SyncRun.kind == kind)
        if finished:
            query = query.where(
                SyncRun.status != SyncStatus.RUNNING,
                ~func.coalesce(SyncRun.error_detail, "").startswith(LOCK_HELD_DETAIL,
                                                                    autoescape=True))
        if status is not None:
            query = query.where(SyncRun.status == status)
        run = session.scalars(query.order_by(SyncRun.started_at.desc()).limit(1)).first()
        result[kind.value] = None if run is None else _run_view(run, now)
    return result


def run_counts(session: Session) -> dict[tuple[str, str], int]:
    rows = session.execute(
        select(SyncRun.kind, SyncRun.status, func.count()).group_by(SyncRun.kind, SyncRun.status))
    return {(kind.value, status.value): int(n) for kind, status, n in rows}


def removal_guard(session: Session) -> RemovalGuardView:
    """Whether the catalog removal guard (CONTRACT §6) stopped a full sync that no full
    sync has succeeded since: the catalog may be holding games G2A no longer sells, and
    someone should look (then `keysync sync --full --allow-mass-removal` if real)."""
    clear = RemovalGuardView(active=False, run_id=None, since=None, detail=None)
    guarded = session.scalars(
        select(SyncRun)
        .where(SyncRun.kind == SyncKind.FULL,
               SyncRun.error_detail.startswith(REMOVAL_GUARD_DETAIL, autoescape=True))
        .order_by(SyncRun.started_at.desc())
        .limit(1)
    ).first()
    if guarded is None:
        return clear
    cleared = session.scalar(
        select(func.count()).select_from(SyncRun).where(
            SyncRun.kind == SyncKind.FULL,
            SyncRun.status == SyncStatus.SUCCEEDED,
            SyncRun.started_at > guarded.started_at,
        )
    )
    if cleared:
        return clear
    return {"active": True, "run_id": str(guarded.id), "since": guarded.started_at.isoformat(),
            "detail": guarded.error_detail}


def webhook_inbox(session: Session, now: datetime) -> WebhookInbox:
    outcome = WebhookEvent.outcome
    pending = WebhookEvent.processed_at.is_(None) & outcome.is_(None)
    orphan = WebhookEvent.processed_at.is_(None) & (outcome == WebhookOutcome.ORPHAN)
    counts = dict.fromkeys(WEBHOOK_OUTCOMES, 0)
    # An index-only scan of `webhook_events_outcome` (deduplicated: a few pages).
    for name, n in session.execute(
        select(func.coalesce(outcome, "pending"), func.count()).group_by(outcome)
    ):
        counts[str(name)] = counts.get(str(name), 0) + int(n)
    # One subquery per age, each a min over its own index (`webhook_events_unprocessed`,
    # `webhook_events_outcome_received`); one aggregate with two FILTERs reads the table.
    oldest = select(func.min(WebhookEvent.received_at))
    oldest_pending, oldest_orphan = session.execute(select(
        oldest.where(pending).scalar_subquery(), oldest.where(orphan).scalar_subquery())).one()
    return WebhookInbox(counts, _age_s(now, oldest_pending), _age_s(now, oldest_orphan))


def stuck_orders(session: Session, now: datetime, after_s: float) -> StuckOrders:
    """Orders not terminal for longer than `after_s` (CONTRACT §8: ORDER_STUCK_AFTER_S)."""
    count, oldest = session.execute(
        select(func.count(), func.min(Order.created_at)).where(
            Order.status.in_(NON_TERMINAL),
            Order.created_at < now - timedelta(seconds=after_s))).one()
    return StuckOrders(int(count), _age_s(now, oldest), after_s)


def funds_state(session: Session, now: datetime, window_s: float) -> FundsState:
    """ORD112 refusals in the window and the last G2A order paid since. A row created after
    the refusal and paid proves the account had funds again; a paid row's `updated_at` would
    not (it moves again when its key is fetched)."""
    recent = G2APurchase.updated_at >= now - timedelta(seconds=window_s)
    refused = (G2APurchase.status == G2APurchaseStatus.FAILED) & G2APurchase.last_error.startswith(
        FUNDS_REFUSAL_PREFIX, autoescape=True)
    paid = G2APurchase.status.in_((G2APurchaseStatus.PAID, G2APurchaseStatus.DELIVERED))
    refusals, last_refusal, last_paid = session.execute(
        select(func.count().filter(refused), func.max(G2APurchase.updated_at).filter(refused),
               func.max(G2APurchase.created_at).filter(paid)).where(recent)).one()
    return FundsState(int(refusals), last_refusal, last_paid)
