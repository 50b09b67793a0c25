"""G2A catalog sync and stock check: one listing engine, two ways of writing what it finds.

Why it is built this way (the parts live beside this module):
- **One run at a time, cluster-wide.** `lock:g2a:sync` (shared with the stock check) is held
  for the whole run; its fencing token (`fence:g2a:sync`) is stored in `sync_runs.fence_token`
  and `check_fence` runs inside every write transaction (`writer`), so a holder whose lock
  expired (GC pause, partition) is refused by Postgres instead of overwriting a newer run.
- **Listing beyond the 500-page cap** (`listing`): ranges split by price, then update time.
- **Out of stock is not removed.** Every listing sends `includeOutOfStock=true`; only a full
  listing that completed without a single failed page, with every leaf range consistent,
  may even consider removing the products it did not see (`removal`: each candidate is
  confirmed by a look-up, and the removal guard stops mass removals). A product that moved
  between price ranges while we listed is caught by a final pass over everything updated
  since the run started.
- **Invalidation after commit.** `game:{id}` of the changed rows after each committed batch
  (`writer`), the list/home/catalog families once per run when anything changed (here).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import redis
import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from structlog.stdlib import BoundLogger

from db.models import SyncKind, SyncRun, SyncStatus
from services.cache import keys as cache_keys
from services.catalog.errors import FENCED_OUT_DETAIL, MAX_DETAIL, LockHeld, describe_error
from services.catalog.listing import Listing, Range
from services.catalog.model import Progress, SyncDeps, SyncResult
from services.catalog.progress import publish as publish_progress
from services.catalog.removal import Removal, remove_absent
from services.catalog.writer import Writer
from services.locks import SYNC_FENCE, SYNC_LOCK, FencedOut, RedisLock, check_fence
from services.metrics import SYNC_PRODUCTS

log = structlog.get_logger(__name__)

# Incremental runs re-read this much before the last successful start: G2A's `updated_at`
# and our clock are different clocks, and a product updated while that run listed must
# not fall between two runs.
INCREMENTAL_OVERLAP = timedelta(minutes=10)

OnProgress = Callable[[Progress], None]

# Failures whose one-line description says it all (a dependency went away); anything else
# is a bug, and its traceback goes to the log.
_EXPECTED_FAILURES: tuple[type[BaseException], ...] = (
    OperationalError, InterfaceError, redis.RedisError,
)


def run_catalog_sync(
    deps: SyncDeps,
    *,
    full: bool = False,
    allow_mass_removal: bool = False,
    on_progress: OnProgress | None = None,
) -> SyncResult:
    """A catalog sync (full or incremental). Raises `LockHeld` if another run is active
    (record it with `record_lock_held` when the caller will not try again).

    Every other outcome has a `sync_runs` row with a readable `error_detail`: a run fenced
    out (even before it wrote its row) is returned `failed` with `fenced_out`; any other
    exception is recorded when Postgres can still take it, then raised.

    `allow_mass_removal` lifts the removal guard for this run only (full runs; an
    incremental run never removes, so asking for it there is a usage error).
    """
    if allow_mass_removal and not full:
        raise ValueError("allow_mass_removal applies to full syncs only")
    kind = SyncKind.FULL if full else SyncKind.INCREMENTAL
    return _run(deps, kind, on_progress, allow_mass_removal=allow_mass_removal)


def run_stock_check(deps: SyncDeps, *, on_progress: OnProgress | None = None) -> SyncResult:
    """Refresh qty/in_stock/price of known games from one listing of the whole catalog."""
    return _run(deps, SyncKind.STOCK, on_progress)


def _run(deps: SyncDeps, kind: SyncKind, on_progress: OnProgress | None,
         *, allow_mass_removal: bool = False) -> SyncResult:
    lock = RedisLock(deps.redis, SYNC_LOCK, deps.lock_ttl_ms, fence_key=SYNC_FENCE,
                     sessions=deps.sessions)
    started_at = deps.clock()
    try:
        acquired = lock.acquire()
        # `holder()` is `host:pid:` and a prefix of the random part: it names the holder
        # without handing out a value that could release its lock.
        holder = None if acquired else lock.holder()
    except FencedOut as exc:
        # Postgres kept refusing freshly issued tokens: newer holders keep writing.
        return record_failed(deps, kind, fenced_out_detail(exc), started_at=started_at,
                             fenced_out=True)
    except Exception as exc:
        _record_crash(deps, kind, exc, started_at)
        raise
    if not acquired:
        # Debug: whoever catches LockHeld says what it does about it (skips, defers, exits 3).
        log.debug("sync.lock_held", kind=kind.value, holder=holder)
        raise LockHeld(holder, kind=kind.value)
    try:
        return _run_locked(deps, kind, lock, on_progress, allow_mass_removal)
    finally:
        try:
            lock.release()
        except redis.RedisError as exc:
            # The run is over and recorded in Postgres; its lock's TTL frees it. Raising here
            # would replace the run's result (or its real error) with a Redis one.
            log.warning("sync.lock_release_failed", error=str(exc))


def _run_locked(deps: SyncDeps, kind: SyncKind, lock: RedisLock,
                on_progress: OnProgress | None, allow_mass_removal: bool) -> SyncResult:
    run = _Run(deps, kind, lock, on_progress)
    try:
        updated_from = _incremental_from(deps) if kind is SyncKind.INCREMENTAL else None
        run.open()
    except FencedOut as exc:
        # A newer holder claimed the fence between our claim and our row: nothing of ours
        # was written, but the attempt is still recorded.
        return record_failed(deps, kind, fenced_out_detail(exc), fence=run.fence,
                             started_at=run.started_at, fenced_out=True)
    except Exception as exc:
        _record_crash(deps, kind, exc, run.started_at, fence=run.fence)
        raise
    structlog.contextvars.bind_contextvars(run_id=run.result.run_id)
    run.bound.info("sync.started", updated_from=updated_from and updated_from.isoformat(),
                   allow_mass_removal=allow_mass_removal)
    status = SyncStatus.FAILED
    crashed = False
    try:
        status = run.list_write_remove(updated_from, allow_mass_removal)
    except FencedOut as exc:
        run.result.error_detail = fenced_out_detail(exc)
        run.result.fenced_out = True
        run.bound.error("sync.fenced_out", error=run.result.error_detail)
    except BaseException as exc:
        crashed = True
        run.result.error_detail = describe_error(exc)
        _log_crash(run.bound, exc)
        raise
    finally:
        run.close(status, crashed=crashed)
        structlog.contextvars.unbind_contextvars("run_id")
    return run.result


class _Run:
    """One locked run's steps: open its `sync_runs` row, list/write/remove, close it."""

    def __init__(self, deps: SyncDeps, kind: SyncKind, lock: RedisLock,
                 on_progress: OnProgress | None) -> None:
        assert lock.fence is not None, "a run starts only under an acquired lock"
        self.deps = deps
        self.kind = kind
        self.fence = lock.fence
        self.on_progress = on_progress
        self.started = time.monotonic()
        self.started_at = deps.clock()
        self.counts_before = deps.client.counts()
        self.run_id: uuid.UUID | None = None  # the sync_runs row, once open()
        self.result = SyncResult(run_id=None, kind=kind.value,
                                 status=SyncStatus.RUNNING.value, fence_token=self.fence)
        self.bound: BoundLogger = log.bind(kind=kind.value, fence=self.fence)
        self.listing = Listing(deps.client, deps.concurrency, self.started_at)
        self.removal = Removal()
        self.writer = Writer(deps, self.fence, lock, self.result,
                             stock_only=kind is SyncKind.STOCK)

    def open(self) -> None:
        """Insert our `running` row, closing the ones older holders abandoned."""
        with self.deps.sessions() as session, session.begin():
            check_fence(session, SYNC_FENCE, self.fence)
            # We hold the lock with the newest fence, so any older `running` row belongs to
            # a holder that died (or was fenced out) without closing it: say so, for status.
            session.execute(
                update(SyncRun)
                .where(SyncRun.status == SyncStatus.RUNNING, SyncRun.fence_token < self.fence)
                .values(status=SyncStatus.FAILED, finished_at=self.started_at,
                        error_detail="abandoned: its holder stopped without finishing")
            )
            row = SyncRun(kind=self.kind, status=SyncStatus.RUNNING, fence_token=self.fence,
                          started_at=self.started_at)
            session.add(row)
        self.run_id = row.id
        self.result.run_id = str(row.id)
        self.bound = self.bound.bind(run_id=self.result.run_id)

    def list_write_remove(self, updated_from: datetime | None,
                          allow_mass_removal: bool) -> SyncStatus:
        full = self.kind is SyncKind.FULL
        self._publish(final=False)
        self._consume(Range(updated_from=updated_from))
        if full and self.listing.errors == 0:
            # Anything that changed (and so maybe changed price range) while we listed.
            self._consume(Range(updated_from=self.started_at - INCREMENTAL_OVERLAP))
        self.writer.flush()
        self.result.errors = self.listing.errors
        if full and self.listing.errors == 0:
            self.removal = remove_absent(self.deps, self.writer, self.result,
                                         allow_mass_removal=allow_mass_removal,
                                         bound=self.bound)
        elif full:
            self.bound.warning("sync.removal_skipped", errors=self.listing.errors)
        self.result.errors = self.listing.errors + self.removal.errors
        return self._status()

    def _consume(self, rng: Range) -> None:
        listing, result = self.listing, self.result
        for products in listing.run([rng]):
            self.writer.add(products)
            result.pages = listing.pages_ok
            if listing.pages_done % 10 == 0:
                self._publish(final=False)
            if self.on_progress is not None:
                self.on_progress(Progress(listing.pages_done, listing.pages_total,
                                          self.writer.received, listing.errors))

    def _status(self) -> SyncStatus:
        if self.listing.errors == 0 and self.removal.errors == 0 and not self.removal.guarded:
            return SyncStatus.SUCCEEDED
        return SyncStatus.PARTIAL if self.listing.pages_ok > 0 else SyncStatus.FAILED

    def close(self, status: SyncStatus, *, crashed: bool) -> None:
        """Record the outcome (row, progress, metrics, log), whatever ended the run."""
        result, listing, removal = self.result, self.listing, self.removal
        result.status = status.value
        result.pages = listing.pages_ok
        result.errors = max(result.errors, listing.errors + removal.errors)
        result.error_detail = (result.error_detail or listing.error_detail
                               or removal.error_detail)
        result.products_seen = len(self.writer.seen)
        g2a = self.deps.client.counts().since(self.counts_before)
        result.requests = g2a.requests
        result.duration_s = round(time.monotonic() - self.started, 3)
        try:
            if self.writer.changed:
                # Once per run: lists, home and catalog pages may show any changed game.
                self.deps.cache.invalidate_all(patterns=cache_keys.CATALOG_PATTERNS)
            assert self.run_id is not None, "close() of a run that never opened"
            _finish(self.deps, self.run_id, result)
        except Exception:
            # Do not mask the exception that ended the run; otherwise this one is the story.
            self.bound.exception("sync.finish_failed")
            if not crashed:
                raise
        self._publish(final=True)
        for outcome, count in (("added", result.added), ("updated", result.updated),
                               ("unchanged", result.unchanged), ("removed", result.removed),
                               ("error", result.errors)):
            SYNC_PRODUCTS.labels(self.kind.value, outcome).inc(count)
        # The run's one summary line (G2A's per-request lines are debug). A failed run is an
        # operator's business (error); a partial one is retried or, when the removal guard
        # stopped it, has its own error line with the alert.
        log_at = {SyncStatus.SUCCEEDED: self.bound.info,
                  SyncStatus.PARTIAL: self.bound.warning}.get(status, self.bound.error)
        log_at("sync.finished", status=result.status, added=result.added,
               updated=result.updated, unchanged=result.unchanged, removed=result.removed,
               errors=result.errors, pages=result.pages, requests=result.requests,
               retries=g2a.retries, faults=g2a.faults, duration_s=result.duration_s,
               error_detail=result.error_detail)

    def _publish(self, *, final: bool) -> None:
        publish_progress(self.deps.redis, self.result, self.listing, self.started_at,
                         final=final)


def fenced_out_detail(exc: FencedOut) -> str:
    return (f"{FENCED_OUT_DETAIL} a newer sync or stock check took lock:g2a:sync and wrote "
            f"first ({exc}); this run's writes were refused")


def record_lock_held(deps: SyncDeps, held: LockHeld) -> SyncResult:
    """Record a run that could not start because the lock was held, once the caller has
    given up on it (the CLI at once; a deferred full sync when its retries run out)."""
    kind = SyncKind(held.kind) if held.kind else SyncKind.FULL
    return record_failed(deps, kind, str(held))


def record_failed(deps: SyncDeps, kind: SyncKind, detail: str, *, fence: int | None = None,
                  started_at: datetime | None = None, fenced_out: bool = False) -> SyncResult:
    """A `failed` row for a run that never got to write its own, and its error line.

    `fence_token` is the token the run held, or 0 when it never held the lock.
    """
    now = deps.clock()
    with deps.sessions() as session, session.begin():
        row = SyncRun(kind=kind, status=SyncStatus.FAILED, fence_token=fence or 0,
                      started_at=started_at or now, finished_at=now,
                      error_detail=detail[:MAX_DETAIL])
        session.add(row)
    log.error("sync.failed", kind=kind.value, run_id=str(row.id), fence=fence,
              error_detail=row.error_detail)
    return SyncResult(run_id=str(row.id), kind=kind.value, status=SyncStatus.FAILED.value,
                      fence_token=fence, error_detail=row.error_detail, fenced_out=fenced_out)


def _record_crash(deps: SyncDeps, kind: SyncKind, exc: Exception, started_at: datetime,
                  *, fence: int | None = None) -> None:
    """Best effort: when the failure is Postgres itself, the log line is all there is."""
    _log_crash(log.bind(kind=kind.value, fence=fence), exc)
    try:
        record_failed(deps, kind, describe_error(exc), fence=fence, started_at=started_at)
    except Exception as again:
        log.warning("sync.failure_not_recorded", kind=kind.value, error=describe_error(again))


def _log_crash(bound: BoundLogger, exc: BaseException) -> None:
    if isinstance(exc, _EXPECTED_FAILURES):
        bound.error("sync.crashed", error=describe_error(exc))
    else:
        bound.exception("sync.crashed", error=describe_error(exc))


def _incremental_from(deps: SyncDeps) -> datetime | None:
    """Start of the last successful catalog run minus the overlap; None lists everything."""
    with deps.sessions() as session:
        last = session.execute(
            select(SyncRun.started_at)
            .where(SyncRun.kind.in_([SyncKind.FULL, SyncKind.INCREMENTAL]),
                   SyncRun.status == SyncStatus.SUCCEEDED)
            .order_by(SyncRun.started_at.desc())
            .limit(1)
        ).scalar_one_or_none()
    return None if last is None else last - INCREMENTAL_OVERLAP


def _finish(deps: SyncDeps, run_id: uuid.UUID, result: SyncResult) -> None:
    # Not fenced: this is our own row, and recording a fenced-out run as failed is the point.
    values = {
        "status": SyncStatus(result.status),
        "finished_at": deps.clock(),
        "added": result.added,
        "updated": result.updated,
        "unchanged": result.unchanged,
        "removed": result.removed,
        "errors": result.errors,
        "pages": result.pages,
        "requests": result.requests,
        "error_detail": result.error_detail,
    }
    with deps.sessions() as session, session.begin():
        session.execute(update(SyncRun).where(SyncRun.id == run_id).values(**values))
