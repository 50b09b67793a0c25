"""One read of the shared state every operator signal is derived from.

`gather` reads Postgres, the Redis cache and the broker once, each section on its own: a
section whose source is down stays `None` and the reason is recorded in `errors`, so a dead
Redis leaves the database sections intact and vice versa. `keysync status` (and the
console's overview) turn a snapshot into checks and a report (`services.ops.status`), the
web process into Prometheus samples (`services.ops.exporter`): both see the same facts.

Every read is bounded: counts and maxima over indexed or small tables (`facts`), one
HGETALL of the heartbeats, a pipeline per queue, the dead letters counted inside Redis;
the broker's reads run beside the database's. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import redis
import structlog
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.models import CacheInvalidation, JobOutbox, SyncStatus
from services.ops.facts import (
    FUNDS_REFUSAL_PREFIX,
    NON_TERMINAL,
    WEBHOOK_OUTCOMES,
    Backlog,
    FundsState,
    RemovalGuardView,
    RunView,
    StuckOrders,
    SyncLockView,
    WebhookInbox,
    backlog,
    funds_state,
    latest_runs,
    removal_guard,
    run_counts,
    stuck_orders,
    sync_lock,
    webhook_inbox,
)
from services.ops.probes import Probe, probe_database, probe_redis
from worker.heartbeat import WorkerBeat, announced_queues, read_heartbeats
from worker.inspect import BrokerInspector, QueueDepth
from worker.scheduler_state import SchedulerState
from worker.scheduler_state import read_state as scheduler_state

# The facts are re-exported: status, checks, the exporter and the console read them here.
__all__ = [
    "FUNDS_REFUSAL_PREFIX",
    "NON_TERMINAL",
    "WEBHOOK_OUTCOMES",
    "Backlog",
    "FundsState",
    "RemovalGuardView",
    "RunView",
    "Snapshot",
    "Sources",
    "StuckOrders",
    "SyncLockView",
    "Thresholds",
    "WebhookInbox",
    "funds_state",
    "gather",
    "removal_guard",
    "run_counts",
    "stuck_orders",
    "sync_lock",
    "webhook_inbox",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")


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

    # The broker's reads (counting 10,000 dead letters is most of its time, spent in
    # Redis) overlap the database's; each section is still recorded in its place below,
    # so `errors` reads the same whichever lane failed first.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="status-broker") as lane:
        broker = lane.submit(_read_broker, sources, now, heartbeat_now) if snap.broker.ok else None
        if snap.database.ok:
            snap.cache_outbox = snap.read("cache_outbox", in_db(
                lambda s: backlog(s, CacheInvalidation, now)))
            snap.job_outbox = snap.read("job_outbox", in_db(
                lambda s: backlog(s, JobOutbox, now)))
            snap.last_runs = snap.read("last_runs", in_db(lambda s: latest_runs(s, now)))
            snap.last_finished = snap.read("last_finished", in_db(
                lambda s: latest_runs(s, now, finished=True)))
            snap.last_success = snap.read("last_success", in_db(
                lambda s: latest_runs(s, now, status=SyncStatus.SUCCEEDED)))
            snap.run_counts = snap.read("run_counts", in_db(run_counts))
            snap.removal_guard = snap.read("removal_guard", in_db(removal_guard))
            snap.webhooks = snap.read("webhook_events", in_db(lambda s: webhook_inbox(s, now)))
            snap.stuck_orders = snap.read("stuck_orders", in_db(
                lambda s: stuck_orders(s, now, limits.order_stuck_after_s)))
            snap.g2a_funds = snap.read("g2a_funds", in_db(
                lambda s: funds_state(s, now, limits.funds_window_s)))
        if broker is not None:
            reads = broker.result()
            snap.workers = snap.read("workers", reads.workers)
            snap.queues = snap.read("queues", reads.queues)
            snap.oldest_ready_s = snap.read("oldest_ready", reads.oldest_ready)
            snap.dead_letters = snap.read("dead_letters", reads.dead_letters)
    if snap.redis.ok:
        snap.sync_lock = snap.read("sync_lock", lambda: sync_lock(sources.cache_redis))
        snap.scheduler = snap.read("scheduler", lambda: scheduler_state(sources.cache_redis,
                                                                        now=now))
    return snap


def _ahead(reader: Callable[[], T]) -> Callable[[], T]:
    """`reader` run now; the thunk returns its value or raises what it raised, so that a
    section read ahead is recorded (`Snapshot.read`) later, in its place."""
    try:
        value = reader()
    except Exception as exc:
        error = exc

        def fail() -> T:
            raise error

        return fail
    return lambda: value


@dataclass(frozen=True)
class _BrokerReads:
    workers: Callable[[], list[WorkerBeat]]
    queues: Callable[[], dict[str, QueueDepth]]
    oldest_ready: Callable[[], dict[str, float]]
    dead_letters: Callable[[], dict[str, int]]


def _read_broker(sources: Sources, now: datetime, heartbeat_now: float | None) -> _BrokerReads:
    inspector = BrokerInspector(sources.broker_redis)
    workers = _ahead(lambda: read_heartbeats(sources.broker_redis, now=heartbeat_now))
    try:
        beats = workers()
    except Exception:
        beats = []
    # The queues the workers announce: discovering them by SCAN would walk every key of
    # a Redis the cache may share (seconds per million keys, at every scrape).
    names = sorted(announced_queues(beats))
    return _BrokerReads(
        workers=workers,
        queues=_ahead(lambda: inspector.depths(names)),
        oldest_ready=_ahead(lambda: {
            q: round(inspector.oldest_ready_age_s(q, now=now.timestamp()), 1) for q in names}),
        dead_letters=_ahead(lambda: inspector.dead_by_actor(queues=names)),
    )
