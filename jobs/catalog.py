"""Actors: catalog (`catalog_sync`, `stock_check`).

Both are idempotent: a duplicate message either finds the lock taken (and is skipped) or
re-lists a catalog that is already up to date (and writes nothing). A run that ends
partial or failed is recorded in `sync_runs` and is not retried here: the next scheduled
run lists again, which is cheaper and no less correct than replaying a long listing.
"""

from __future__ import annotations

import dramatiq
import structlog

from jobs._broker import broker
from keysync.resources import Resources
from services.catalog import (
    LockHeld,
    SyncDeps,
    SyncResult,
    run_catalog_sync,
    run_stock_check,
)
from worker.context import current_job
from worker.enqueue import Actor
from worker.schedule import Every

log = structlog.get_logger(__name__)

# A full listing at 600 req/min takes about a minute per 10,000 products.
_TIME_LIMIT_MS = 2 * 3600 * 1000

SCHEDULE = (
    # Scheduled syncs are full: they also catch products removed upstream, which an
    # incremental (updated-since) listing cannot see. A late twice-a-day sync is far
    # better than none, hence the long grace.
    Every(Actor.CATALOG_SYNC, lambda settings: settings.sync_cron, grace_s=3600, args=(True,)),
    Every(Actor.STOCK_CHECK, lambda settings: settings.stock_check_cron, grace_s=900),
)


def sync_deps(resources: Resources) -> SyncDeps:
    return SyncDeps(
        sessions=resources.sessions,
        redis=resources.redis,
        cache=resources.cache,
        client=resources.g2a_client(),
        markup_percent=resources.settings.price_markup_percent,
        max_removal_percent=resources.settings.sync_max_removal_percent,
    )


def _log_outcome(result: SyncResult) -> None:
    log.info("sync.job_done", **{k: v for k, v in result.as_dict().items()
                                 if k != "error_detail"})


@dramatiq.actor(broker=broker, max_retries=10, time_limit=_TIME_LIMIT_MS)
def catalog_sync(full: bool = False, allow_mass_removal: bool = False) -> None:
    # `allow_mass_removal` (only from `keysync sync --full --allow-mass-removal`) travels
    # in this one message, so it lifts the removal guard for this run alone, deferred
    # retries included, and never for the scheduler's runs.
    job = current_job()
    try:
        result = run_catalog_sync(sync_deps(job.resources), full=bool(full),
                                  allow_mass_removal=bool(full) and bool(allow_mass_removal))
    except LockHeld as held:
        if full:
            # The default crons fire the full sync and the stock check at the same tick
            # (02:00 and 14:00 are quarter hours). A full sync is the only run that notices
            # delisted products, so losing that race delays it (SYNC_LOCK_RETRY_MS, up to
            # max_retries times) instead of dropping it for 12 hours.
            delay = job.resources.settings.sync_lock_retry_ms
            log.info("sync.deferred_lock_held", kind="full", holder=held.holder,
                     retry_in_ms=delay)
            raise dramatiq.Retry("lock:g2a:sync is held", delay=delay) from None
        # An incremental run is superseded by whichever run holds the lock (or the next one).
        log.info("sync.skipped_lock_held", kind="incremental", holder=held.holder)
        return
    _log_outcome(result)


@dramatiq.actor(broker=broker, max_retries=3, time_limit=_TIME_LIMIT_MS)
def stock_check() -> None:
    job = current_job()
    try:
        result = run_stock_check(sync_deps(job.resources))
    except LockHeld as held:
        log.info("sync.skipped_lock_held", kind="stock", holder=held.holder)
        return
    _log_outcome(result)
