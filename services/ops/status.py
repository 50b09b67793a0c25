"""`keysync status`: one truthful snapshot of the system, whichever dependencies are down.

Every section is gathered independently: a dead Redis leaves the database sections
intact and vice versa. The shape never changes: a section that could not be read is
`null` and the failing dependency says why, so scripts can rely on the keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict, TypeVar

import redis
import structlog
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import (
    CacheInvalidation,
    JobOutbox,
    SyncKind,
    SyncRun,
    SyncStatus,
    WebhookEvent,
)
from services.catalog import REMOVAL_GUARD_DETAIL, SYNC_PROGRESS
from services.locks import SYNC_FENCE, SYNC_LOCK
from services.ops.probes import probe_database, probe_redis
from worker.election import read_state as scheduler_state
from worker.inspect import BrokerInspector

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass
class StatusSources:
    engine: Engine
    sessions: sessionmaker[Session]
    cache_redis: redis.Redis
    broker_redis: redis.Redis
    errors: list[str] = field(default_factory=list)

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Record (not raise) a failure of one section; its value stays None."""
        try:
            yield
        except Exception as exc:
            log.debug("status section failed", section=name, error=str(exc))
            self.errors.append(f"{name}: {type(exc).__name__}")


def _read(sources: StatusSources, name: str, reader: Callable[[], T]) -> T | None:
    with sources.section(name):
        return reader()
    return None


def collect(sources: StatusSources, *, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)

    db = probe_database(sources.engine)
    cache_redis = probe_redis(sources.cache_redis)
    broker = probe_redis(sources.broker_redis)

    def in_db(fn: Callable[[Session], T]) -> Callable[[], T]:
        def run() -> T:
            with sources.sessions() as session:
                return fn(session)

        return run

    outbox_pending = (
        _read(sources, "cache_outbox", in_db(_count(CacheInvalidation))) if db.ok else None
    )
    report: dict[str, Any] = {
        "checked_at": now.isoformat(),
        "ok": db.ok and cache_redis.ok and broker.ok,
        "database": db.as_dict(),
        "redis": cache_redis.as_dict(),
        "broker": broker.as_dict(),
        "cache": {
            # Degraded: Redis unreachable, or invalidations still waiting in the outbox
            # (cached entries may be stale until they are replayed).
            "degraded": (not cache_redis.ok) or bool(outbox_pending),
            "outbox_pending": outbox_pending,
        },
        "job_outbox": {
            "pending": _read(sources, "job_outbox", in_db(_count(JobOutbox))) if db.ok else None
        },
        "queues": None,
        "dead_letters": None,
        "sync_lock": None,
        "last_runs": None,
        "removal_guard": None,
        "webhook_events": None,
        "scheduler": None,
    }
    if broker.ok:
        inspector = BrokerInspector(sources.broker_redis)
        report["queues"] = _read(sources, "queues", lambda: {
            queue: depth.as_dict() for queue, depth in inspector.depths().items()})
        report["dead_letters"] = _read(sources, "dead_letters", inspector.dead_by_actor)
    if cache_redis.ok:
        report["sync_lock"] = _read(sources, "sync_lock", lambda: sync_lock(sources.cache_redis))
        report["scheduler"] = _read(
            sources, "scheduler", lambda: scheduler_state(sources.cache_redis, now=now)
        )
    if db.ok:
        report["last_runs"] = _read(sources, "last_runs", in_db(lambda s: last_runs(s, now)))
        report["removal_guard"] = _read(sources, "removal_guard", in_db(removal_guard))
        report["webhook_events"] = _read(sources, "webhook_events", in_db(webhook_counts))
    report["errors"] = sources.errors
    return report


def _count(model: type[Any]) -> Callable[[Session], int]:
    def count(session: Session) -> int:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)

    return count


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SyncLockView(TypedDict):
    held: bool
    holder: str | None
    ttl_ms: int | None
    fence: int | None
    progress: dict[str, str]


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


class RemovalGuardView(TypedDict):
    active: bool
    run_id: str | None
    since: str | None
    detail: str | None


_GUARD_CLEAR = RemovalGuardView(active=False, run_id=None, since=None, detail=None)


def sync_lock(client: redis.Redis) -> SyncLockView:
    pipe = client.pipeline(transaction=False)
    pipe.get(SYNC_LOCK)
    pipe.pttl(SYNC_LOCK)
    pipe.get(SYNC_FENCE)
    pipe.hgetall(SYNC_PROGRESS)
    holder, ttl_ms, fence, progress = pipe.execute()
    return {
        "held": holder is not None,
        # The lock value is the holder's random token; its prefix identifies the holder
        # in logs without handing out a value that could release the lock.
        "holder": _text(holder)[:8] if holder is not None else None,
        "ttl_ms": int(ttl_ms) if holder is not None and int(ttl_ms) >= 0 else None,
        "fence": int(fence) if fence is not None else None,
        "progress": {_text(k): _text(v) for k, v in progress.items()},
    }


def last_runs(session: Session, now: datetime) -> dict[str, RunView | None]:
    result: dict[str, RunView | None] = {}
    for kind in SyncKind:
        run = session.scalars(
            select(SyncRun).where(SyncRun.kind == kind).order_by(SyncRun.started_at.desc())
        ).first()
        if run is None:
            result[kind.value] = None
            continue
        finished = run.finished_at
        result[kind.value] = {
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
        }
    return result


def removal_guard(session: Session) -> RemovalGuardView:
    """Whether the catalog removal guard (CONTRACT §6) stopped a full sync that no full
    sync has succeeded since: the catalog may be holding games G2A no longer sells, and
    someone should look (then `keysync sync --full --allow-mass-removal` if real)."""
    guarded = session.scalars(
        select(SyncRun)
        .where(SyncRun.kind == SyncKind.FULL,
               SyncRun.error_detail.startswith(REMOVAL_GUARD_DETAIL, autoescape=True))
        .order_by(SyncRun.started_at.desc())
        .limit(1)
    ).first()
    if guarded is None:
        return _GUARD_CLEAR.copy()
    cleared = session.scalar(
        select(func.count()).select_from(SyncRun).where(
            SyncRun.kind == SyncKind.FULL,
            SyncRun.status == SyncStatus.SUCCEEDED,
            SyncRun.started_at > guarded.started_at,
        )
    )
    if cleared:
        return _GUARD_CLEAR.copy()
    return {
        "active": True,
        "run_id": str(guarded.id),
        "since": guarded.started_at.isoformat(),
        "detail": guarded.error_detail,
    }


def webhook_counts(session: Session) -> dict[str, int]:
    outcome = WebhookEvent.outcome
    pending = WebhookEvent.processed_at.is_(None)
    unprocessed, orphan, dead = session.execute(
        select(
            func.count().filter(
                pending, outcome.is_distinct_from("orphan"), outcome.is_distinct_from("dead")
            ),
            # Orphans wait for their order to appear; dead ones need an operator.
            func.count().filter(pending, outcome == "orphan"),
            func.count().filter(outcome == "dead"),
        )
    ).one()
    return {"unprocessed": int(unprocessed), "orphan": int(orphan), "dead": int(dead)}
