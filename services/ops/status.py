"""`keysync status` (and the console's overview): the snapshot, its checks, one JSON shape.

The shape never changes whichever dependencies are down: a section that could not be read
is `null`, the failing dependency says why, and every check is still listed (a check that
could not see its source is `warn`, "unknown"). `overall` is the worst check state; `ok` is
true when nothing is critical (what `keysync status` exits 0 on). Numbers are JSON numbers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.ops.checks import Check, CheckState, evaluate, worst
from services.ops.snapshot import Snapshot, Sources, Thresholds, gather

# The CLI builds these; the name is kept for callers of the report API.
StatusSources = Sources

__all__ = ["StatusSources", "Thresholds", "collect", "report"]


def collect(sources: Sources, *, now: datetime | None = None,
            thresholds: Thresholds | None = None,
            heartbeat_now: float | None = None) -> dict[str, Any]:
    snap = gather(sources, now=now, thresholds=thresholds, heartbeat_now=heartbeat_now)
    return report(snap, evaluate(snap))


def report(snap: Snapshot, checks: list[Check]) -> dict[str, Any]:
    overall = worst(checks)
    cache_outbox = snap.cache_outbox
    webhooks = snap.webhooks
    queues = None
    if snap.queues is not None:
        ages = snap.oldest_ready_s or {}
        queues = {name: {**depth.as_dict(), "oldest_ready_s": ages.get(name)}
                  for name, depth in snap.queues.items()}
    return {
        "checked_at": snap.now.isoformat(),
        "overall": overall.value,
        "ok": overall is not CheckState.CRITICAL,
        "checks": [c.model_dump(mode="json") for c in checks],
        "database": snap.database.as_dict(),
        "redis": snap.redis.as_dict(),
        "broker": snap.broker.as_dict(),
        "cache": {
            # Degraded: Redis unreachable, or invalidations still waiting in the outbox
            # (cached entries may be stale until they are replayed).
            "degraded": (not snap.redis.ok) or bool(cache_outbox and cache_outbox.pending),
            "outbox_pending": cache_outbox.pending if cache_outbox else None,
            "outbox_oldest_s": cache_outbox.oldest_s if cache_outbox else None,
        },
        "job_outbox": {
            "pending": snap.job_outbox.pending if snap.job_outbox else None,
            "oldest_s": snap.job_outbox.oldest_s if snap.job_outbox else None,
        },
        "queues": queues,
        "dead_letters": snap.dead_letters,
        "workers": None if snap.workers is None else [b.as_dict() for b in snap.workers],
        "sync_lock": snap.sync_lock,
        "last_runs": snap.last_runs,
        "removal_guard": snap.removal_guard,
        "webhook_events": None if webhooks is None else {
            "unprocessed": webhooks.by_outcome["pending"],
            "orphan": webhooks.by_outcome["orphan"],
            "dead": webhooks.by_outcome["dead"],
            "by_outcome": webhooks.by_outcome,
            "oldest_pending_s": webhooks.oldest_pending_s,
        },
        "stuck_orders": None if snap.stuck_orders is None else {
            "count": snap.stuck_orders.count,
            "oldest_s": snap.stuck_orders.oldest_s,
            "after_s": snap.stuck_orders.after_s,
        },
        "g2a_funds": None if snap.g2a_funds is None else {
            "refusing": snap.g2a_funds.refusing,
            "refusals": snap.g2a_funds.refusals,
            "last_refusal_at": _iso(snap.g2a_funds.last_refusal_at),
            "last_paid_at": _iso(snap.g2a_funds.last_paid_at),
        },
        "scheduler": snap.scheduler,
        "errors": snap.errors,
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
