"""Housekeeping actors: cache-outbox replay and job-outbox relay (both scheduled)."""

from __future__ import annotations

import dramatiq
import structlog

from services import job_outbox
from services.cache import CacheUnavailable
from worker import current_job

log = structlog.get_logger(__name__)


@dramatiq.actor(max_retries=0, time_limit=60_000)
def replay_cache_outbox() -> None:
    """Apply invalidations recorded while Redis was unreachable (no-op while it still is)."""
    try:
        current_job().resources.cache.replay_outbox()
    except CacheUnavailable:
        log.info("cache outbox replay postponed: redis still unavailable")


@dramatiq.actor(max_retries=0, time_limit=60_000)
def relay_job_outbox() -> None:
    """Send jobs whose after-commit dispatch failed (broker down, process killed)."""
    job = current_job()
    job_outbox.relay(job.resources.sessions, job.resources.broker)
