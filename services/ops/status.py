"""`keysync status`: one truthful snapshot of the system, whichever dependencies are down.

Every section is gathered independently: a dead Redis leaves the database sections
intact and vice versa. The shape never changes: a section that could not be read is
`null` and the failing dependency says why, so scripts can rely on the keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis
import structlog
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from db.models import (
    CacheInvalidation,
    JobOutbox,
    SyncKind,
    SyncRun,
    SyncStatus,
    WebhookEvent,
)
from services import scheduling
from services.catalog.sync import REMOVAL_GUARD_DETAIL
from services.locks import SYNC_FENCE, SYNC_LOCK

log = structlog.get_logger(__name__)

T = TypeVar("T")

SYNC_PROGRESS = "g2a:sync:progress"
BROKER_NAMESPACE = "dramatiq"
# Dead letters are decoded to count them per actor; past this many we report a lower bound.
_MAX_DEAD_SCANNED = 10_000


@dataclass
class Probe:
    ok: bool = False
    latency_ms: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "latency_ms": self.latency_ms, "error": self.error}


def _probe(fn: Callable[[], object]) -> Probe:
    started = time.perf_counter()
    try:
        fn()
    except Exception as exc:
        return Probe(False, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return Probe(True, round((time.perf_counter() - started) * 1000, 2))


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

    def ping_db() -> None:
        with sources.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    db = _probe(ping_db)
    cache_redis = _probe(sources.cache_redis.ping)
    broker = _probe(sources.broker_redis.ping)

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
        report["queues"] = _read(sources, "queues", lambda: queue_depths(sources.broker_redis))
        report["dead_letters"] = _read(
            sources, "dead_letters", lambda: dead_letters(sources.broker_redis)
        )
    if cache_redis.ok:
        report["sync_lock"] = _read(sources, "sync_lock", lambda: sync_lock(sources.cache_redis))
        report["scheduler"] = _read(
            sources, "scheduler", lambda: scheduling.read_state(sources.cache_redis, now=now)
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


def _queue_names(client: redis.Redis) -> set[str]:
    # dramatiq keeps no registry of queues in Redis; every queue that ever held a message
    # has a `.msgs` hash. SCAN (never KEYS) keeps Redis responsive on a large keyspace.
    names = {"default"}
    for key in client.scan_iter(match=f"{BROKER_NAMESPACE}:*.msgs", count=1000):
        name = _text(key).removeprefix(f"{BROKER_NAMESPACE}:").removesuffix(".msgs")
        name = name.removesuffix(".XQ").removesuffix(".DQ")
        names.add(name)
    return names


def queue_depths(client: redis.Redis) -> dict[str, dict[str, int]]:
    """Per queue: ready (waiting), delayed (retries/ETAs), in progress, dead-lettered."""
    depths: dict[str, dict[str, int]] = {}
    for queue in sorted(_queue_names(client)):
        base = f"{BROKER_NAMESPACE}:{queue}"
        pipe = client.pipeline(transaction=False)
        pipe.llen(base)
        pipe.hlen(f"{base}.msgs")
        pipe.hlen(f"{base}.DQ.msgs")
        pipe.zcard(f"{base}.XQ")
        ready, stored, delayed, dead = (int(v) for v in pipe.execute())
        depths[queue] = {
            "ready": ready,
            "delayed": delayed,
            # `.msgs` holds a message from enqueue until ack: ready ones are also listed.
            "in_progress": max(stored - ready, 0),
            "dead": dead,
        }
    return depths


def dead_letters(client: redis.Redis) -> dict[str, int]:
    """Dead-lettered messages per actor, over every queue."""
    per_actor: dict[str, int] = {}
    scanned = 0
    for queue in sorted(_queue_names(client)):
        for _, raw in client.hscan_iter(f"{BROKER_NAMESPACE}:{queue}.XQ.msgs", count=500):
            scanned += 1
            if scanned > _MAX_DEAD_SCANNED:
                return per_actor
            try:
                actor = str(json.loads(raw)["actor_name"])
            except (ValueError, KeyError, TypeError):
                actor = "<undecodable>"
            per_actor[actor] = per_actor.get(actor, 0) + 1
    return per_actor


def sync_lock(client: redis.Redis) -> dict[str, Any]:
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


def last_runs(session: Session, now: datetime) -> dict[str, dict[str, Any] | None]:
    result: dict[str, dict[str, Any] | None] = {}
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


def removal_guard(session: Session) -> dict[str, Any]:
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
        return {"active": False, "run_id": None, "since": None, "detail": None}
    cleared = session.scalar(
        select(func.count()).select_from(SyncRun).where(
            SyncRun.kind == SyncKind.FULL,
            SyncRun.status == SyncStatus.SUCCEEDED,
            SyncRun.started_at > guarded.started_at,
        )
    )
    if cleared:
        return {"active": False, "run_id": None, "since": None, "detail": None}
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
