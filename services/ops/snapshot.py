"""One read of the shared state every operator signal is derived from.

`gather` reads Postgres, the Redis cache and the broker once, each section on its own: a
section whose source is down stays `None` and the reason is recorded in `errors`, so a dead
Redis leaves the database sections intact and vice versa. `keysync status` (and the
console's overview) turn a snapshot into checks and a report (`services.ops.status`), the
web process into Prometheus samples (`services.ops.exporter`): both see the same facts.

Every read is bounded: counts and maxima over indexed or small tables, one HGETALL of the
heartbeats, a pipeline per queue. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypedDict, TypeVar

import redis
import structlog
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

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
from services.ops.probes import Probe, probe_database, probe_redis
from worker.election import SchedulerState
from worker.election import read_state as scheduler_state
from worker.heartbeat import WorkerBeat, announced_queues, read_heartbeats
from worker.inspect import BrokerInspector, QueueDepth

log = structlog.get_logger(__name__)

T = TypeVar("T")

# G2A's "not enough funds" refusal (CONTRACT §6), as fulfilment stores it in
# `g2a_purchases.last_error` (`G2AError`'s "{code}: {message}").
FUNDS_REFUSAL_PREFIX = "ORD112:"
# Outcomes of `webhook_events`; "pending" is an event not processed yet (no outcome).
WEBHOOK_OUTCOMES = ("pending", "processed", "ignored", "orphan", "dead")
NON_TERMINAL = (OrderStatus.PENDING, OrderStatus.PROCESSING)


@dataclass(frozen=True)
class Thresholds:
    """When a fact becomes a warning or critical (CONTRACT §2, §3; docs/operations.md)."""

    worker_silent_s: float = 60  # no heartbeat that recent: nobody consumes the queues
    ready_age_warn_s: float = 60  # the next ready message has waited this long
    ready_age_critical_s: float = 300
    full_sync_max_age_s: float = 13 * 3600  # two cron ticks a day, one hour of slack
    stock_check_max_age_s: float = 30 * 60  # every 15 min, one tick of slack
    order_stuck_after_s: float = 900  # ORDER_STUCK_AFTER_S
    funds_window_s: float = 3600  # an ORD112 this recent, not followed by a payment
    outbox_warn_s: float = 60  # a job-outbox row this old was not sent after commit
    outbox_critical_s: float = 600
    webhook_pending_warn_s: float = 300  # unprocessed events the sweeper should have retried
    webhook_orphan_warn_s: float = 900  # events still waiting for an order that never came


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


@dataclass
class Sources:
    engine: Engine
    sessions: sessionmaker[Session]
    cache_redis: redis.Redis
    broker_redis: redis.Redis


@dataclass
class Snapshot:
    now: datetime
    thresholds: Thresholds
    database: Probe
    redis: Probe
    broker: Probe
    cache_outbox: Backlog | None = None
    job_outbox: Backlog | None = None
    queues: dict[str, QueueDepth] | None = None
    oldest_ready_s: dict[str, float] | None = None
    dead_letters: dict[str, int] | None = None
    workers: list[WorkerBeat] | None = None
    sync_lock: SyncLockView | None = None
    last_runs: dict[str, RunView | None] | None = None  # the latest run, running or not
    last_finished: dict[str, RunView | None] | None = None
    last_success: dict[str, RunView | None] | None = None
    run_counts: dict[tuple[str, str], int] | None = None  # (kind, status) -> runs
    removal_guard: RemovalGuardView | None = None
    webhooks: WebhookInbox | None = None
    stuck_orders: StuckOrders | None = None
    g2a_funds: FundsState | None = None
    scheduler: SchedulerState | None = None
    errors: list[str] = field(default_factory=list)

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Record (not raise) a failure of one section; its value stays None."""
        try:
            yield
        except Exception as exc:
            log.debug("status section failed", section=name, error=str(exc))
            self.errors.append(f"{name}: {type(exc).__name__}")

    def read(self, name: str, reader: Callable[[], T]) -> T | None:
        with self.section(name):
            return reader()
        return None


def gather(sources: Sources, *, now: datetime | None = None,
           thresholds: Thresholds | None = None,
           heartbeat_now: float | None = None) -> Snapshot:
    """Everything the checks and metrics need. `now` is the clock for Postgres ages; worker
    heartbeats are aged by Redis's clock unless `heartbeat_now` (epoch seconds) is given."""
    now = now or datetime.now(UTC)
    limits = thresholds or Thresholds()
    snap = Snapshot(now=now, thresholds=limits, database=probe_database(sources.engine),
                    redis=probe_redis(sources.cache_redis),
                    broker=probe_redis(sources.broker_redis))

    def in_db(fn: Callable[[Session], T]) -> Callable[[], T]:
        def run() -> T:
            with sources.sessions() as session:
                return fn(session)

        return run

    if snap.database.ok:
        snap.cache_outbox = snap.read("cache_outbox", in_db(
            lambda s: _backlog(s, CacheInvalidation, now)))
        snap.job_outbox = snap.read("job_outbox", in_db(lambda s: _backlog(s, JobOutbox, now)))
        snap.last_runs = snap.read("last_runs", in_db(lambda s: _latest_runs(s, now)))
        snap.last_finished = snap.read("last_finished", in_db(
            lambda s: _latest_runs(s, now, finished=True)))
        snap.last_success = snap.read("last_success", in_db(
            lambda s: _latest_runs(s, now, status=SyncStatus.SUCCEEDED)))
        snap.run_counts = snap.read("run_counts", in_db(run_counts))
        snap.removal_guard = snap.read("removal_guard", in_db(removal_guard))
        snap.webhooks = snap.read("webhook_events", in_db(lambda s: webhook_inbox(s, now)))
        snap.stuck_orders = snap.read("stuck_orders", in_db(
            lambda s: stuck_orders(s, now, limits.order_stuck_after_s)))
        snap.g2a_funds = snap.read("g2a_funds", in_db(
            lambda s: funds_state(s, now, limits.funds_window_s)))
    if snap.broker.ok:
        inspector = BrokerInspector(sources.broker_redis)
        snap.workers = snap.read("workers", lambda: read_heartbeats(
            sources.broker_redis, now=heartbeat_now))
        # The queues the workers announce: discovering them by SCAN would walk every key of
        # a Redis the cache may share (seconds per million keys, at every scrape).
        names = sorted(announced_queues(snap.workers or ()))
        snap.queues = snap.read("queues", lambda: inspector.depths(names))
        snap.oldest_ready_s = snap.read("oldest_ready", lambda: {
            q: round(inspector.oldest_ready_age_s(q, now=now.timestamp()), 1) for q in names})
        snap.dead_letters = snap.read("dead_letters", lambda: inspector.dead_by_actor(
            queues=names))
    if snap.redis.ok:
        snap.sync_lock = snap.read("sync_lock", lambda: sync_lock(sources.cache_redis))
        snap.scheduler = snap.read("scheduler", lambda: scheduler_state(sources.cache_redis,
                                                                        now=now))
    return snap


def _age_s(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round(max((now - then).total_seconds(), 0.0), 1)


def _backlog(session: Session, model: type[CacheInvalidation] | type[JobOutbox],
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


def _latest_runs(session: Session, now: datetime, *, finished: bool = False,
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
    orphan = WebhookEvent.processed_at.is_(None) & (outcome == "orphan")
    counts = dict.fromkeys(WEBHOOK_OUTCOMES, 0)
    for name, n in session.execute(
        select(func.coalesce(outcome, "pending"), func.count()).group_by(outcome)
    ):
        counts[str(name)] = counts.get(str(name), 0) + int(n)
    oldest_pending, oldest_orphan = session.execute(
        select(func.min(WebhookEvent.received_at).filter(pending),
               func.min(WebhookEvent.received_at).filter(orphan))).one()
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
