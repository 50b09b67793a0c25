"""Housekeeping actors: cache-outbox replay (every 10 s) and job-outbox relay (every minute)."""

from __future__ import annotations

import dramatiq
import structlog

from jobs._broker import broker
from services import job_outbox
from services.cache import CacheUnavailable
from worker.context import current_job
from worker.enqueue import Actor
from worker.schedule import Every

log = structlog.get_logger(__name__)

SCHEDULE = (
    # Every 10 s: while invalidations wait in the outbox, cached reads stay bypassed.
    Every(Actor.REPLAY_CACHE_OUTBOX, "*/10 * * * * *", grace_s=10),
    Every(Actor.RELAY_JOB_OUTBOX, "* * * * *", grace_s=60),
)


@dramatiq.actor(broker=broker, max_retries=0, time_limit=60_000)
def replay_cache_outbox() -> None:
    """Apply invalidations recorded while Redis was unreachable (no-op while it still is)."""
    try:
        current_job().resources.cache.replay_outbox()
    except CacheUnavailable:
        log.info("cache outbox replay postponed: redis still unavailable")


@dramatiq.actor(broker=broker, max_retries=0, time_limit=60_000)
def relay_job_outbox() -> None:
    """Send jobs whose after-commit dispatch failed (broker down, process killed)."""
    job = current_job()
    job_outbox.relay(job.resources.sessions, job.resources.broker)
