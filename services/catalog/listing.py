"""Listing the G2A catalog: every page of a set of ranges, beyond the 10,000-product cap.

A listing shows at most 500 pages of 20. A range whose first page reports `total > 10,000`
is split in two by `minPrice` (recursively; by `updated_at` when a single price holds too
many), and its leaves are fetched page by page on a thread pool that the shared Redis rate
limiter paces. A leaf is consistent when all its pages reported the same total and the docs
add up to it; one that is not is listed once more, then counted as an error, so a full run
never removes on an inconsistent listing.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import structlog

from services.catalog.model import ErrorTally
from services.g2a import G2AClient, G2AError, G2AProduct, ProductPage

log = structlog.get_logger(__name__)

PAGE_SIZE = 20
MAX_PAGE = 500
MAX_LISTING = PAGE_SIZE * MAX_PAGE
# Open-ended price ranges are split at max(2 * lo, lo + this many cents).
_OPEN_RANGE_STEP_CENTS = 1000
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Range:
    """A listing slice: minPrice in [lo, hi] cents (hi None = open) and an updated_at window."""

    price_lo: int | None = None
    price_hi: int | None = None
    updated_from: datetime | None = None
    updated_to: datetime | None = None

    def __str__(self) -> str:
        # Operators read this in `sync_runs.error_detail` and logs: G2A's own units
        # (minPrice in euros, updated_at as G2A writes it), never a Python repr.
        parts = []
        if self.price_lo is not None or self.price_hi is not None:
            lo = _euros(self.price_lo or 0)
            parts.append(f"minPrice {lo}..{_euros(self.price_hi)}" if self.price_hi is not None
                         else f"minPrice >= {lo}")
        if self.updated_from is not None or self.updated_to is not None:
            start, end = _when(self.updated_from), _when(self.updated_to)
            if self.updated_to is None:
                parts.append(f"updated since {start}")
            elif self.updated_from is None:
                parts.append(f"updated until {end}")
            else:
                parts.append(f"updated {start}..{end}")
        return "range " + ", ".join(parts) if parts else "the whole catalog"

    def split(self, now: datetime) -> tuple[Range, Range] | None:
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


def _euros(cents: int) -> str:
    return f"{Decimal(cents) / 100:.2f}"


def _when(moment: datetime | None) -> str:
    # G2A's `yyyy-mm-dd hh:mm:ss`, in UTC (the zone of its `updated_at`).
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class RangeState:
    rng: Range
    attempt: int = 1
    totals: set[int] = field(default_factory=set)
    docs: int = 0
    pending: int = 0
    # Settled: failed, split into halves, or already counted as an error; no leaf check.
    settled: bool = False


class Listing(ErrorTally):
    """Fetches every page of a set of ranges concurrently, yielding pages as they arrive.

    Splits ranges over the cap, re-lists a leaf once when its pages disagree (the catalog
    moved under us), and counts failures instead of raising: a failed page makes the run
    partial, it never stops the pages that can still be fetched.
    """

    MAX_ATTEMPTS = 2

    def __init__(self, client: G2AClient, concurrency: int, now: datetime) -> None:
        super().__init__()
        self._client = client
        self._concurrency = concurrency
        self._now = now
        self.pages_done = 0  # answered or failed, for progress
        self.pages_ok = 0
        self.pages_total = 0
        self.inconsistent = 0

    def run(self, ranges: Iterable[Range]) -> Iterator[list[G2AProduct]]:
        pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="g2a-list")
        inflight: dict[Future[ProductPage], tuple[RangeState, int]] = {}

        def submit(state: RangeState, page: int) -> None:
            state.pending += 1
            # A context copy per task: the fetch threads' log lines then carry the run_id
            # (and job ids) bound by the caller; one Context cannot be entered twice at once.
            ctx = contextvars.copy_context()
            inflight[pool.submit(ctx.run, self._fetch, state.rng, page)] = (state, page)

        try:
            for rng in ranges:
                self.pages_total += 1
                submit(RangeState(rng), 1)
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

    def _fetch(self, rng: Range, page: int) -> ProductPage:
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
        state: RangeState,
        result: ProductPage,
        submit: Callable[[RangeState, int], None],
    ) -> None:
        if result.total > MAX_LISTING:
            halves = state.rng.split(self._now)
            if halves is not None:
                # This page's docs were still real data (already yielded); the range itself
                # is replaced by its halves.
                state.settled = True
                for half in halves:
                    self.pages_total += 1
                    submit(RangeState(half), 1)
                return
            # Still list the 10,000 we can see; the rest is an error, so nothing is removed.
            state.settled = True
            self.count(f"{state.rng} holds {result.total} products, cannot split")
        state.totals.add(result.total)
        state.docs += len(result.products)
        pages = min(MAX_PAGE, math.ceil(result.total / PAGE_SIZE))
        self.pages_total += max(0, pages - 1)
        for page in range(2, pages + 1):
            submit(state, page)

    def _leaf_done(self, state: RangeState, submit: Callable[[RangeState, int], None]) -> None:
        if len(state.totals) == 1 and state.docs == next(iter(state.totals)):
            return
        if state.attempt < self.MAX_ATTEMPTS:
            log.info("sync.range_moved", range=str(state.rng), totals=sorted(state.totals),
                     docs=state.docs)
            self.pages_total += 1
            submit(RangeState(state.rng, attempt=state.attempt + 1), 1)
            return
        self.inconsistent += 1
        self.count(f"{state.rng} kept changing while listed")

    def _failed(self, state: RangeState, page: int, exc: G2AError) -> None:
        state.settled = True
        self.pages_done += 1
        log.warning("sync.page_failed", range=str(state.rng), page=page, error=str(exc))
        self.count(f"page {page} of {state.rng}: {exc}")
