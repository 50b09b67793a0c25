"""G2A catalog sync and stock check: one listing engine, two ways of writing what it finds.

Why it is built this way:
- **One run at a time, cluster-wide.** `lock:g2a:sync` (shared with the stock check) is held
  for the whole run; its fencing token (`fence:g2a:sync`) is stored in `sync_runs.fence_token`
  and `check_fence` runs inside every write transaction, so a holder whose lock expired (GC
  pause, partition) is refused by Postgres instead of overwriting a newer run.
- **Listing beyond the 500-page cap.** A listing shows at most 10,000 products. A range whose
  first page reports `total > 10,000` is split in two by `minPrice` (recursively; by
  `updated_at` when a single price holds too many), and its leaves are fetched page by page
  on a thread pool that the shared Redis rate limiter paces.
- **Out of stock is not removed.** Every listing sends `includeOutOfStock=true`; only a full
  listing that completed without a single failed page, with every leaf range consistent
  (all its pages reported the same total and the docs add up to it), may even consider
  removing the products it did not see. A product that moved between price ranges while we
  listed is caught by a final pass over everything updated since the run started.
- **Absence is only a candidate (CONTRACT §6).** A consistent listing can still miss a
  product: G2A removes one from an already-read page and adds one elsewhere, `total` stays
  the same, and the product at the next page boundary slides onto the page we already
  read. So every active game the listing did not show is looked up by id
  (`GET /v1/products?id=`, same limiter and retries as every request): one G2A still
  returns is kept and written, one it does not is deactivated, one whose look-up fails is
  kept and counted as an error (never deactivate on doubt). A nothing-removed run costs
  no extra request.
- **Removal guard.** When the candidates exceed `max_removal_percent` of the active games
  (an empty `200 {total: 0}` answer is the canonical case), nothing is looked up and
  nothing deactivated: the run ends partial with a `removal guard:` error detail and
  `alert=sync_removal_guard`, until an operator passes `allow_mass_removal` for one run.
- **Batch writes.** Each batch is one `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO
  UPDATE ... WHERE (cols) IS DISTINCT FROM (excluded cols) RETURNING id, (xmax = 0)`: one
  round trip per 1,000 products, and the RETURNING rows are exactly the games that changed,
  which is what the cache must forget. A no-op re-sync writes no rows and invalidates nothing.
- **Invalidation after commit.** `game:{id}` of the changed rows after each committed batch,
  the list/home/catalog families once per run when anything changed.
"""

from __future__ import annotations

import contextvars
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import redis
import structlog
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import SyncKind, SyncRun, SyncStatus
from services.cache import Cache
from services.cache import keys as cache_keys
from services.cart import service as cart
from services.g2a import G2AClient, G2AError, G2AProduct, ProductPage
from services.locks import SYNC_FENCE, SYNC_LOCK, FencedOut, RedisLock, check_fence
from services.metrics import SYNC_PRODUCTS

log = structlog.get_logger(__name__)

SYNC_PROGRESS = "g2a:sync:progress"
PAGE_SIZE = 20
MAX_PAGE = 500
MAX_LISTING = PAGE_SIZE * MAX_PAGE
BATCH_SIZE = 1000
# Incremental runs re-read this much before the last successful start: G2A's `updated_at`
# and our clock are different clocks, and a product updated while that run listed must
# not fall between two runs.
INCREMENTAL_OVERLAP = timedelta(minutes=10)
# Open-ended price ranges are split at max(2 * lo, lo + this many cents).
_OPEN_RANGE_STEP_CENTS = 1000
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_CENT = Decimal("0.01")
_PROGRESS_TTL_S = 7 * 24 * 3600
# `sync_runs.error_detail` of a run the removal guard stopped starts with this; `keysync
# status` finds guarded runs by it (no extra column: the detail is the operator's message).
REMOVAL_GUARD_DETAIL = "removal guard:"


class LockHeld(Exception):
    """Another catalog sync or stock check holds `lock:g2a:sync`."""

    def __init__(self, holder: str | None) -> None:
        super().__init__("another sync holds lock:g2a:sync")
        self.holder = holder


def round_half_up(value: Decimal, places: int = 2) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def shop_price(g2a_price: Decimal, markup_percent: Decimal) -> Decimal:
    """CONTRACT §4: `round_half_up(g2a_price * (1 + markup/100), 2)`, exact in Decimal."""
    return round_half_up(g2a_price * (1 + markup_percent / 100))


def shop_slug(g2a_slug: str, product_id: str) -> str:
    """Our slug: G2A's, suffixed with the product id unless it already ends with it.

    G2A slugs may collide; every result ends with `-{id}` and numeric ids contain no `-`,
    so the id is recoverable from the slug and two products never share one.
    """
    suffix = f"-{product_id}"
    base = g2a_slug if g2a_slug.endswith(suffix) else g2a_slug + suffix
    if len(base) <= 300:
        return base
    return g2a_slug[: 300 - len(suffix)] + suffix


@dataclass(frozen=True, slots=True)
class SyncDeps:
    """Everything a run needs, passed in (no globals): tests and the CLI build their own."""

    sessions: sessionmaker[Session]
    redis: redis.Redis
    cache: Cache
    client: G2AClient
    markup_percent: Decimal
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    concurrency: int = 8
    lock_ttl_ms: int = 60_000
    batch_size: int = BATCH_SIZE
    # SYNC_MAX_REMOVAL_PERCENT: a full listing missing more than this share of the active
    # games removes nothing (CONTRACT §6).
    max_removal_percent: Decimal = Decimal("10")


@dataclass
class SyncResult:
    run_id: str | None
    kind: str
    status: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    errors: int = 0
    pages: int = 0
    requests: int = 0
    duration_s: float = 0.0
    products_seen: int = 0
    invalidated_keys: int = 0
    fence_token: int | None = None
    error_detail: str | None = None
    # Full runs: active games absent from the listing, how many of those a direct look-up
    # still found (kept), and whether the removal guard stopped the removal.
    removal_candidates: int = 0
    still_listed: int = 0
    removal_guard: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Progress:
    pages_done: int
    pages_total: int
    products: int
    errors: int


# -- listing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Range:
    """A listing slice: minPrice in [lo, hi] cents (hi None = open) and an updated_at window."""

    price_lo: int | None = None
    price_hi: int | None = None
    updated_from: datetime | None = None
    updated_to: datetime | None = None

    def split(self, now: datetime) -> tuple[_Range, _Range] | None:
        lo = self.price_lo or 0
        hi = self.price_hi
        if hi is None:
            pivot = max(2 * lo, lo + _OPEN_RANGE_STEP_CENTS)
            return replace(self, price_lo=lo, price_hi=pivot), replace(self, price_lo=pivot + 1)
        if hi > lo:
            mid = (lo + hi) // 2
            return replace(self, price_lo=lo, price_hi=mid), replace(self, price_lo=mid + 1)
        # One price point holds more than a listing can show: split by update time instead.
        start = self.updated_from or _EARLIEST
        end = self.updated_to or now + timedelta(days=1)
        if end - start < timedelta(seconds=2):
            return None
        middle = start + (end - start) / 2
        middle = middle.replace(microsecond=0)
        return (
            replace(self, updated_from=start, updated_to=middle),
            replace(self, updated_from=middle + timedelta(seconds=1), updated_to=end),
        )


@dataclass
class _RangeState:
    rng: _Range
    attempt: int = 1
    totals: set[int] = field(default_factory=set)
    docs: int = 0
    pending: int = 0
    # Settled: failed, split into halves, or already counted as an error; no leaf check.
    settled: bool = False


class _Listing:
    """Fetches every page of a set of ranges concurrently, yielding pages as they arrive.

    Splits ranges over the cap, re-lists a leaf once when its pages disagree (the catalog
    moved under us), and counts failures instead of raising: a failed page makes the run
    partial, it never stops the pages that can still be fetched.
    """

    MAX_ATTEMPTS = 2

    def __init__(self, client: G2AClient, concurrency: int, now: datetime) -> None:
        self._client = client
        self._concurrency = concurrency
        self._now = now
        self.pages_done = 0  # answered or failed, for progress
        self.pages_ok = 0
        self.pages_total = 0
        self.errors = 0
        self.inconsistent = 0
        self.error_detail: str | None = None

    def run(self, ranges: Iterable[_Range]) -> Iterator[list[G2AProduct]]:
        pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="g2a-list")
        inflight: dict[Future[ProductPage], tuple[_RangeState, int]] = {}

        def submit(state: _RangeState, page: int) -> None:
            state.pending += 1
            # A context copy per task: the fetch threads' log lines then carry the run_id
            # (and job ids) bound by the caller; one Context cannot be entered twice at once.
            ctx = contextvars.copy_context()
            inflight[pool.submit(ctx.run, self._fetch, state.rng, page)] = (state, page)

        try:
            for rng in ranges:
                self.pages_total += 1
                submit(_RangeState(rng), 1)
            while inflight:
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for future in done:
                    state, page = inflight.pop(future)
                    state.pending -= 1
                    try:
                        result = future.result()
                    except G2AError as exc:
                        self._failed(state, page, exc)
                        continue
                    self.pages_done += 1
                    self.pages_ok += 1
                    yield result.products
                    if page == 1:
                        self._first_page(state, result, submit)
                    else:
                        state.totals.add(result.total)
                        state.docs += len(result.products)
                    if state.pending == 0 and not state.settled:
                        self._leaf_done(state, submit)
        finally:
            # When the consumer stops early (fenced out, DB error), queued pages must not be
            # fetched: cancel them instead of waiting for up to 500 requests.
            pool.shutdown(wait=True, cancel_futures=True)

    def _fetch(self, rng: _Range, page: int) -> ProductPage:
        return self._client.list_products(
            page=page,
            include_out_of_stock=True,
            updated_at_from=rng.updated_from,
            updated_at_to=rng.updated_to,
            min_price_from=None if rng.price_lo is None else Decimal(rng.price_lo) / 100,
            min_price_to=None if rng.price_hi is None else Decimal(rng.price_hi) / 100,
        )

    def _first_page(
        self,
        state: _RangeState,
        result: ProductPage,
        submit: Callable[[_RangeState, int], None],
    ) -> None:
        if result.total > MAX_LISTING:
            halves = state.rng.split(self._now)
            if halves is not None:
                # This page's docs were still real data (already yielded); the range itself
                # is replaced by its halves.
                state.settled = True
                for half in halves:
                    self.pages_total += 1
                    submit(_RangeState(half), 1)
                return
            # Still list the 10,000 we can see; the rest is an error, so nothing is removed.
            state.settled = True
            self._count_error(f"range {state.rng} holds {result.total} products, cannot split")
        state.totals.add(result.total)
        state.docs += len(result.products)
        pages = min(MAX_PAGE, math.ceil(result.total / PAGE_SIZE))
        self.pages_total += max(0, pages - 1)
        for page in range(2, pages + 1):
            submit(state, page)

    def _leaf_done(self, state: _RangeState, submit: Callable[[_RangeState, int], None]) -> None:
        if len(state.totals) == 1 and state.docs == next(iter(state.totals)):
            return
        if state.attempt < self.MAX_ATTEMPTS:
            log.info("sync.range_moved", range=str(state.rng), totals=sorted(state.totals),
                     docs=state.docs)
            self.pages_total += 1
            submit(_RangeState(state.rng, attempt=state.attempt + 1), 1)
            return
        self.inconsistent += 1
        self._count_error(f"range {state.rng} kept changing while listed")

    def _failed(self, state: _RangeState, page: int, exc: G2AError) -> None:
        state.settled = True
        self.pages_done += 1
        log.warning("sync.page_failed", range=str(state.rng), page=page, error=str(exc))
        self._count_error(f"page {page} of {state.rng}: {exc}")

    def _count_error(self, detail: str) -> None:
        self.errors += 1
        if self.error_detail is None:
            self.error_detail = detail[:500]


# -- writing ---------------------------------------------------------------------------------

_COMPARED = (
    "slug, name, price, g2a_price, g2a_qty, in_stock, is_active, platform, region, image_url, "
    "g2a_updated_at"
)

_UPSERT = text(
    f"""
    INSERT INTO games AS g (id, g2a_product_id, {_COMPARED}, synced_at, updated_at)
    SELECT gen_random_uuid(), v.pid, v.slug, v.name, v.price, v.g2a_price, v.qty, v.qty > 0,
           true, v.platform, v.region, v.image_url, v.g2a_updated_at, now(), now()
    FROM unnest(
        CAST(:pid AS text[]), CAST(:slug AS text[]), CAST(:name AS text[]),
        CAST(:price AS numeric[]), CAST(:g2a_price AS numeric[]), CAST(:qty AS int[]),
        CAST(:platform AS text[]), CAST(:region AS text[]), CAST(:image_url AS text[]),
        CAST(:g2a_updated_at AS timestamptz[])
    ) AS v(pid, slug, name, price, g2a_price, qty, platform, region, image_url, g2a_updated_at)
    ON CONFLICT (g2a_product_id) DO UPDATE SET
        slug = excluded.slug, name = excluded.name, price = excluded.price,
        g2a_price = excluded.g2a_price, g2a_qty = excluded.g2a_qty,
        in_stock = excluded.in_stock, is_active = true, platform = excluded.platform,
        region = excluded.region, image_url = excluded.image_url,
        g2a_updated_at = excluded.g2a_updated_at, synced_at = now(), updated_at = now()
    WHERE ({', '.join('g.' + c for c in _COMPARED.split(', '))})
          IS DISTINCT FROM ({', '.join('excluded.' + c for c in _COMPARED.split(', '))})
    RETURNING g.id, (xmax = 0) AS inserted
    """
)

# Stock only: never adds games (that is the sync's job) and leaves removed games alone.
_STOCK_UPDATE = text(
    """
    UPDATE games AS g SET g2a_qty = v.qty, in_stock = v.qty > 0, g2a_price = v.g2a_price,
           price = v.price, synced_at = now(), updated_at = now()
    FROM unnest(CAST(:pid AS text[]), CAST(:qty AS int[]), CAST(:g2a_price AS numeric[]),
                CAST(:price AS numeric[])) AS v(pid, qty, g2a_price, price)
    WHERE g.g2a_product_id = v.pid AND g.is_active
      AND (g.g2a_qty, g.in_stock, g.g2a_price, g.price)
          IS DISTINCT FROM (v.qty, v.qty > 0, v.g2a_price, v.price)
    RETURNING g.id
    """
)

_CANDIDATES = text(
    """
    SELECT g2a_product_id FROM games
    WHERE is_active AND NOT (g2a_product_id = ANY(CAST(:seen AS text[])))
    ORDER BY g2a_product_id
    """
)

_ACTIVE = text("SELECT count(*) FROM games WHERE is_active")

_REMOVE = text(
    """
    UPDATE games SET is_active = false, in_stock = false, updated_at = now()
    WHERE is_active AND g2a_product_id = ANY(CAST(:gone AS text[]))
    RETURNING id
    """
)


class _Writer:
    """Buffers listed products and writes them in fenced batches, counting what changed."""

    def __init__(self, deps: SyncDeps, fence: int, lock: RedisLock, result: SyncResult,
                 stock_only: bool) -> None:
        self._deps = deps
        self._fence = fence
        self._lock = lock
        self._result = result
        self._stock_only = stock_only
        self._buffer: dict[str, tuple[G2AProduct, Decimal]] = {}
        self.seen: set[str] = set()
        self.received = 0
        self.changed = False

    def add(self, products: list[G2AProduct]) -> None:
        self.received += len(products)
        for product in products:
            g2a_price = product.g2a_price
            if g2a_price is None:
                # Unsellable without a price; still "seen", so a full run does not remove it.
                log.warning("sync.product_without_price", g2a_product_id=product.id)
                self.seen.add(product.id)
                continue
            # Last copy wins: a product listed twice (pages shifted) must appear once per
            # statement, or ON CONFLICT would touch the same row twice.
            self._buffer[product.id] = (product, round_half_up(g2a_price))
        if len(self._buffer) >= self._deps.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        rows_in = list(self._buffer.values())
        self._buffer = {}
        self._guard()
        batch = [p for p, _ in rows_in]
        # Both rounded here, to numeric(12,2)'s scale, so IS DISTINCT FROM compares like
        # with like and an unchanged product never counts as a write.
        g2a_prices = [g2a_price for _, g2a_price in rows_in]
        prices = [shop_price(g2a_price, self._deps.markup_percent) for g2a_price in g2a_prices]
        with self._deps.sessions() as session, session.begin():
            check_fence(session, SYNC_FENCE, self._fence)
            if self._stock_only:
                rows = session.execute(_STOCK_UPDATE, {
                    "pid": [p.id for p in batch],
                    "qty": [p.qty for p in batch],
                    "g2a_price": g2a_prices,
                    "price": prices,
                }).all()
                changed_ids = [row[0] for row in rows]
                added = 0
            else:
                rows = session.execute(_UPSERT, {
                    "pid": [p.id for p in batch],
                    "slug": [shop_slug(p.slug, p.id) for p in batch],
                    "name": [p.name for p in batch],
                    "price": prices,
                    "g2a_price": g2a_prices,
                    "qty": [p.qty for p in batch],
                    "platform": [p.platform for p in batch],
                    "region": [p.region for p in batch],
                    "image_url": [p.image_url for p in batch],
                    "g2a_updated_at": [p.updated_at for p in batch],
                }).all()
                changed_ids = [row[0] for row in rows]
                added = sum(1 for row in rows if row[1])
        self.seen.update(p.id for p in batch)
        self._result.added += added
        self._result.updated += len(changed_ids) - added
        self._result.unchanged += len(batch) - len(changed_ids)
        self._invalidate_games(changed_ids)

    def candidates(self) -> tuple[list[str], int]:
        """Active games this run has not seen, and how many games are active."""
        self.flush()
        with self._deps.sessions() as session:
            absent = session.execute(_CANDIDATES, {"seen": sorted(self.seen)}).scalars().all()
            active = int(session.execute(_ACTIVE).scalar_one())
        return list(absent), active

    def remove(self, gone: list[str]) -> None:
        """Deactivate games G2A confirmed absent, in one fenced transaction."""
        if not gone:
            return
        self._guard()
        with self._deps.sessions() as session, session.begin():
            check_fence(session, SYNC_FENCE, self._fence)
            ids = session.execute(_REMOVE, {"gone": sorted(gone)}).scalars().all()
        self._result.removed += len(ids)
        self._invalidate_games(list(ids))

    def _invalidate_games(self, ids: list[uuid.UUID]) -> None:
        if not ids:
            return
        self.changed = True
        with self._deps.sessions() as session:
            holders = cart.holder_keys(session, ids)
        stale = [cache_keys.game(i) for i in ids] + holders
        self._result.invalidated_keys += len(stale)
        self._deps.cache.invalidate(stale)

    def _guard(self) -> None:
        # The fence is what protects the data; this only stops early once we know.
        if self._lock.lost.is_set():
            raise FencedOut(f"{SYNC_LOCK} was lost during the run")


# -- removal ---------------------------------------------------------------------------------


@dataclass
class _Removal:
    """What happened to the candidates of one complete full listing."""

    errors: int = 0
    error_detail: str | None = None
    guarded: bool = False

    def count_error(self, detail: str) -> None:
        self.errors += 1
        if self.error_detail is None:
            self.error_detail = detail[:500]


def _remove_absent(deps: SyncDeps, writer: _Writer, result: SyncResult, *,
                   allow_mass_removal: bool,
                   bound: structlog.stdlib.BoundLogger) -> _Removal:
    """Deactivate exactly the active games G2A confirms it no longer lists (CONTRACT §6)."""
    outcome = _Removal()
    candidates, active = writer.candidates()
    result.removal_candidates = len(candidates)
    if not candidates:
        return outcome
    # Decided before any look-up: a listing that lost a large share of the catalog is far
    # more likely a G2A fault (an empty answer, a truncated index) than real removals, and
    # confirming them all would cost one request each.
    share = Decimal(len(candidates) * 100) / Decimal(active)
    if share > deps.max_removal_percent and not allow_mass_removal:
        outcome.guarded = True
        result.removal_guard = True
        outcome.error_detail = (
            f"{REMOVAL_GUARD_DETAIL} {len(candidates)} of {active} active games "
            f"({share:.1f} %) were absent from the full listing, more than "
            f"SYNC_MAX_REMOVAL_PERCENT={deps.max_removal_percent}; nothing was deactivated. "
            "If G2A really removed them, run `keysync sync --full --allow-mass-removal`."
        )
        bound.error("sync.removal_guard", alert="sync_removal_guard",
                    candidates=len(candidates), active=active,
                    percent=float(round(share, 2)),
                    max_percent=float(deps.max_removal_percent))
        return outcome
    if share > deps.max_removal_percent:
        bound.warning("sync.removal_guard_lifted", candidates=len(candidates), active=active,
                      percent=float(round(share, 2)))

    gone: list[str] = []
    pool = ThreadPoolExecutor(min(deps.concurrency, len(candidates)),
                              thread_name_prefix="g2a-lookup")
    try:
        futures = {
            # A context copy per task so the look-ups' log lines carry the run_id.
            pool.submit(contextvars.copy_context().run, deps.client.get_product, pid): pid
            for pid in candidates
        }
        for future in as_completed(futures):
            pid = futures[future]
            try:
                product = future.result()
            except G2AError as exc:
                # In doubt, keep: a look-up G2A did not answer proves nothing.
                bound.warning("sync.lookup_failed", g2a_product_id=pid, error=str(exc))
                outcome.count_error(f"look-up of product {pid}: {exc}")
                continue
            if product is None:
                gone.append(pid)
                continue
            # Still sold: the listing missed it (it slid across a page boundary). Write it
            # like any listed product, which also keeps it seen.
            result.still_listed += 1
            writer.add([product])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    writer.flush()
    if result.still_listed:
        bound.info("sync.absent_but_listed", kept=result.still_listed,
                   candidates=len(candidates))
    writer.remove(gone)
    return outcome


# -- runs ------------------------------------------------------------------------------------


def run_catalog_sync(
    deps: SyncDeps,
    *,
    full: bool = False,
    allow_mass_removal: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> SyncResult:
    """A catalog sync (full or incremental). Raises `LockHeld` if another run is active.

    `allow_mass_removal` lifts the removal guard for this run only (full runs; an
    incremental run never removes, so asking for it there is a usage error).
    """
    if allow_mass_removal and not full:
        raise ValueError("allow_mass_removal applies to full syncs only")
    kind = SyncKind.FULL if full else SyncKind.INCREMENTAL
    return _run(deps, kind, on_progress, allow_mass_removal=allow_mass_removal)


def run_stock_check(
    deps: SyncDeps, *, on_progress: Callable[[Progress], None] | None = None
) -> SyncResult:
    """Refresh qty/in_stock/price of known games from one listing of the whole catalog."""
    return _run(deps, SyncKind.STOCK, on_progress)


def _run(
    deps: SyncDeps, kind: SyncKind, on_progress: Callable[[Progress], None] | None,
    *, allow_mass_removal: bool = False,
) -> SyncResult:
    lock = RedisLock(deps.redis, SYNC_LOCK, deps.lock_ttl_ms, fence_key=SYNC_FENCE,
                     sessions=deps.sessions)
    if not lock.acquire():
        holder = lock.holder()
        log.info("sync.lock_held", kind=kind.value)
        # The token's prefix identifies the holder (as `keysync status` shows it) without
        # handing out a value that could release its lock.
        raise LockHeld(holder[:8] if holder else None)
    try:
        return _run_locked(deps, kind, lock, on_progress, allow_mass_removal)
    finally:
        try:
            lock.release()
        except redis.RedisError as exc:
            # The run is over and recorded in Postgres; its lock's TTL frees it. Raising here
            # would replace the run's result (or its real error) with a Redis one.
            log.warning("sync.lock_release_failed", error=str(exc))


def _run_locked(
    deps: SyncDeps,
    kind: SyncKind,
    lock: RedisLock,
    on_progress: Callable[[Progress], None] | None,
    allow_mass_removal: bool,
) -> SyncResult:
    assert lock.fence is not None
    fence = lock.fence
    started = time.monotonic()
    started_at = deps.clock()
    requests_before = deps.client.requests_made
    updated_from = _incremental_from(deps) if kind is SyncKind.INCREMENTAL else None

    with deps.sessions() as session, session.begin():
        check_fence(session, SYNC_FENCE, fence)
        # We hold the lock with the newest fence, so any older `running` row belongs to a
        # holder that died (or was fenced out) without closing it: say so, for status.
        session.execute(
            update(SyncRun)
            .where(SyncRun.status == SyncStatus.RUNNING, SyncRun.fence_token < fence)
            .values(status=SyncStatus.FAILED, finished_at=started_at,
                    error_detail="abandoned: its holder stopped without finishing")
        )
        run = SyncRun(kind=kind, status=SyncStatus.RUNNING, fence_token=fence,
                      started_at=started_at)
        session.add(run)
    run_id = str(run.id)
    bound = log.bind(run_id=run_id, kind=kind.value, fence=fence)
    structlog.contextvars.bind_contextvars(run_id=run_id)
    result = SyncResult(run_id=run_id, kind=kind.value, status=SyncStatus.RUNNING.value,
                        fence_token=fence)
    bound.info("sync.started", updated_from=updated_from and updated_from.isoformat(),
               allow_mass_removal=allow_mass_removal)
    writer = _Writer(deps, fence, lock, result, stock_only=kind is SyncKind.STOCK)
    listing = _Listing(deps.client, deps.concurrency, started_at)
    status = SyncStatus.FAILED
    removal = _Removal()
    crashed = False
    try:

        def consume(rng: _Range) -> None:
            for products in listing.run([rng]):
                writer.add(products)
                result.pages = listing.pages_ok
                if listing.pages_done % 10 == 0:
                    _publish(deps.redis, result, listing, started_at, final=False)
                if on_progress is not None:
                    on_progress(Progress(listing.pages_done, listing.pages_total,
                                         writer.received, listing.errors))

        _publish(deps.redis, result, listing, started_at, final=False)
        consume(_Range(updated_from=updated_from))
        if kind is SyncKind.FULL and listing.errors == 0:
            # Anything that changed (and so maybe changed price range) while we listed.
            consume(_Range(updated_from=started_at - INCREMENTAL_OVERLAP))
        writer.flush()
        result.errors = listing.errors
        if kind is SyncKind.FULL and listing.errors == 0:
            removal = _remove_absent(deps, writer, result,
                                     allow_mass_removal=allow_mass_removal, bound=bound)
        elif kind is SyncKind.FULL:
            bound.warning("sync.removal_skipped", errors=listing.errors)
        result.errors = listing.errors + removal.errors
        status = _status(listing, removal)
    except FencedOut as exc:
        result.error_detail = str(exc)
        bound.error("sync.fenced_out", error=str(exc))
    except BaseException as exc:
        crashed = True
        result.error_detail = f"{type(exc).__name__}: {exc}"[:500]
        bound.exception("sync.crashed")
        raise
    finally:
        result.status = status.value
        result.pages = listing.pages_ok
        result.errors = max(result.errors, listing.errors + removal.errors)
        result.error_detail = (result.error_detail or listing.error_detail
                               or removal.error_detail)
        result.products_seen = len(writer.seen)
        result.requests = deps.client.requests_made - requests_before
        result.duration_s = round(time.monotonic() - started, 3)
        try:
            if writer.changed:
                # Once per run: lists, home and catalog pages may show any changed game.
                deps.cache.invalidate_all(patterns=cache_keys.CATALOG_PATTERNS)
            _finish(deps, run.id, result)
        except Exception:
            # Do not mask the exception that ended the run; otherwise this one is the story.
            bound.exception("sync.finish_failed")
            if not crashed:
                raise
        _publish(deps.redis, result, listing, started_at, final=True)
        for outcome, count in (("added", result.added), ("updated", result.updated),
                               ("unchanged", result.unchanged), ("removed", result.removed),
                               ("error", result.errors)):
            SYNC_PRODUCTS.labels(kind.value, outcome).inc(count)
        bound.info("sync.finished", status=result.status, added=result.added,
                   updated=result.updated, unchanged=result.unchanged, removed=result.removed,
                   errors=result.errors, pages=result.pages, requests=result.requests,
                   duration_s=result.duration_s)
        structlog.contextvars.unbind_contextvars("run_id")
    return result


def _status(listing: _Listing, removal: _Removal) -> SyncStatus:
    if listing.errors == 0 and removal.errors == 0 and not removal.guarded:
        return SyncStatus.SUCCEEDED
    return SyncStatus.PARTIAL if listing.pages_ok > 0 else SyncStatus.FAILED


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


def _publish(client: redis.Redis, result: SyncResult, listing: _Listing, started_at: datetime,
             *, final: bool) -> None:
    """Best effort: progress is for operators; a Redis hiccup must not fail the run."""
    mapping: dict[Any, Any] = {
        "run_id": result.run_id or "",
        "kind": result.kind,
        "status": result.status,
        "started_at": started_at.isoformat(),
        "pages_done": listing.pages_done,
        "pages_total": listing.pages_total,
        "added": result.added,
        "updated": result.updated,
        "unchanged": result.unchanged,
        "removed": result.removed,
        "errors": listing.errors,
        "requests": result.requests,
        "finished": int(final),
    }
    try:
        pipe = client.pipeline(transaction=True)
        pipe.delete(SYNC_PROGRESS)
        pipe.hset(SYNC_PROGRESS, mapping=mapping)
        pipe.expire(SYNC_PROGRESS, _PROGRESS_TTL_S)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("sync.progress_unavailable", error=str(exc))


__all__ = [
    "INCREMENTAL_OVERLAP",
    "REMOVAL_GUARD_DETAIL",
    "SYNC_PROGRESS",
    "LockHeld",
    "Progress",
    "SyncDeps",
    "SyncResult",
    "round_half_up",
    "run_catalog_sync",
    "run_stock_check",
    "shop_price",
    "shop_slug",
]
