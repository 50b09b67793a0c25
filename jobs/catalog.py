"""Actors: catalog (`catalog_sync`, `stock_check`).

Both are idempotent: a duplicate message either finds the lock taken (and is skipped or
deferred) or re-lists a catalog that is already up to date (and writes nothing).

A `catalog_sync` that did not succeed (failed, fenced out, pages missing, crashed) is retried
with growing delays (`services.catalog.RetryPolicy`: 1, 2, 4, 8, 15 … minutes) while the
retry starts within SYNC_RETRY_WINDOW_S (an hour) of its first attempt, then recorded and
dead-lettered for an operator: the next scheduled full sync is 12 hours away, and only a
full sync notices delisted products. A run the removal guard stopped is not retried: it
would stop again, and an operator has to decide. A `stock_check` is not retried: the next
one is 15 minutes away.
"""

from __future__ import annotations

import time
from typing import NoReturn

import dramatiq
import structlog

from jobs._broker import broker
from keysync.resources import Resources
from services.catalog import (
    LockHeld,
    RetryPolicy,
    SyncDeps,
    SyncResult,
    describe_error,
    record_lock_held,
    run_catalog_sync,
    run_stock_check,
)
from worker.context import JobContext, current_job
from worker.enqueue import Actor
from worker.schedule import Every

log = structlog.get_logger(__name__)

# A full listing at 600 req/min takes about a minute per 10,000 products.
_TIME_LIMIT_MS = 2 * 3600 * 1000
# The retry window bounds a sync's attempts (lock deferrals every 30 s for an hour are 120);
# dramatiq's own count and backoff only apply to what escapes the actor (a time limit, a
# worker shutdown), kept in the same range as the window's.
_MAX_RETRIES = 150
_BACKSTOP_MIN_MS = 60_000
_BACKSTOP_MAX_MS = 900_000
# Per-message retry state, kept in the message's options (they travel with each retry):
# when its first attempt started, and how many attempts failed (lock deferrals excluded).
_FIRST_ATTEMPT_MS = "sync_first_attempt_ms"
_FAILURES = "sync_failures"

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


class SyncGaveUp(Exception):
    """A catalog sync's retries ran out: the message is dead-lettered (`throws`), not
    retried again, with this readable reason as its last error."""


def retry_policy(resources: Resources) -> RetryPolicy:
    settings = resources.settings
    return RetryPolicy(min_delay_ms=settings.sync_retry_min_ms,
                       max_delay_ms=settings.sync_retry_max_ms,
                       window_ms=settings.sync_retry_window_s * 1000)


def _log_outcome(result: SyncResult) -> None:
    log.info("sync.job_done", **{k: v for k, v in result.as_dict().items()
                                 if k != "error_detail"})


@dramatiq.actor(broker=broker, max_retries=_MAX_RETRIES, time_limit=_TIME_LIMIT_MS,
                throws=(SyncGaveUp,), min_backoff=_BACKSTOP_MIN_MS, max_backoff=_BACKSTOP_MAX_MS)
def catalog_sync(full: bool = False, allow_mass_removal: bool = False) -> None:
    # `allow_mass_removal` (only from `keysync sync --full --allow-mass-removal`) travels
    # in this one message, so it lifts the removal guard for this run alone, deferred
    # retries included, and never for the scheduler's runs.
    job = current_job()
    job.message.options.setdefault(_FIRST_ATTEMPT_MS, _now_ms())
    deps = sync_deps(job.resources)
    kind = "full" if full else "incremental"
    try:
        result = run_catalog_sync(deps, full=bool(full),
                                  allow_mass_removal=bool(full) and bool(allow_mass_removal))
    except LockHeld as held:
        if not full:
            # Superseded by whichever run holds the lock (or the next one).
            log.info("sync.skipped_lock_held", kind=kind, holder=held.holder)
            return
        # The default crons fire the full sync and the stock check at the same tick
        # (02:00 and 14:00 are quarter hours). A full sync is the only run that notices
        # delisted products, so losing that race defers it (SYNC_LOCK_RETRY_MS) instead
        # of dropping it for 12 hours. Expected, hence info.
        _try_again(job, deps, kind, str(held), job.resources.settings.sync_lock_retry_ms,
                   lock_held=held)
    except Exception as exc:
        # The run logged it (traceback for a bug) and recorded it when Postgres could.
        _try_again(job, deps, kind, describe_error(exc), _next_backoff(job))
    _log_outcome(result)
    if result.retryable:
        _try_again(job, deps, kind, result.error_detail or f"{kind} sync {result.status}",
                   _next_backoff(job))


def _next_backoff(job: JobContext) -> int:
    failures = int(job.message.options.get(_FAILURES, 0)) + 1
    job.message.options[_FAILURES] = failures
    return retry_policy(job.resources).backoff_ms(failures)


def _try_again(job: JobContext, deps: SyncDeps, kind: str, reason: str, delay_ms: int,
               *, lock_held: LockHeld | None = None) -> NoReturn:
    """Retry this message in `delay_ms` if that is still inside the window; else record
    why it stops and dead-letter it."""
    options = job.message.options
    elapsed_ms = _now_ms() - int(options[_FIRST_ATTEMPT_MS])
    retries = int(options.get("retries", 0))
    failures = int(options.get(_FAILURES, 0))
    bound = log.bind(kind=kind, retries=retries, failures=failures, reason=reason)
    if retries < _MAX_RETRIES and retry_policy(job.resources).allows(elapsed_ms, delay_ms):
        if lock_held is not None:
            # Debug: the worker's `job deferred` line (info) says it, with this reason.
            bound.debug("sync.deferred_lock_held", holder=lock_held.holder, retry_in_ms=delay_ms)
        else:
            bound.warning("sync.retry_scheduled", retry_in_ms=delay_ms)
        raise dramatiq.Retry(reason, delay=delay_ms)
    if lock_held is not None:
        # The run never started, so it has no row yet: this one says why.
        record_lock_held(deps, lock_held)
    attempts = retries + 1
    bound.error("sync.gave_up", alert="sync_failed", attempts=attempts,
                elapsed_s=round(elapsed_ms / 1000, 1))
    raise SyncGaveUp(f"{kind} sync gave up after {attempts} attempts in "
                     f"{elapsed_ms // 1000} s: {reason}")


def _now_ms() -> int:
    return int(time.time() * 1000)


@dramatiq.actor(broker=broker, max_retries=3, time_limit=_TIME_LIMIT_MS)
def stock_check() -> None:
    job = current_job()
    try:
        result = run_stock_check(sync_deps(job.resources))
    except LockHeld as held:
        log.info("sync.skipped_lock_held", kind="stock", holder=held.holder)
        return
    _log_outcome(result)
