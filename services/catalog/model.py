"""What a catalog run takes (`SyncDeps`) and what it reports (`SyncResult`, `Progress`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal

import redis
from sqlalchemy.orm import Session, sessionmaker

from services.cache import Cache
from services.g2a import G2AClient

BATCH_SIZE = 1000

# A run's summary as plain values: what `--json` prints and the job logs.
SyncSummary = dict[str, str | int | float | bool | None]


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
    # A newer lock holder wrote first, so this run's writes were refused (CLI exit 4).
    fenced_out: bool = False

    def as_dict(self) -> SyncSummary:
        return asdict(self)

    @property
    def retryable(self) -> bool:
        """Worth running again soon: the run failed or missed pages. Not a removal-guard
        stop: listing again would only stop again, an operator has to decide."""
        return self.status in ("failed", "partial") and not self.removal_guard


@dataclass
class ErrorTally:
    """Errors counted instead of raised (a failure makes the run partial, it never stops
    the rest), and the first one's detail for `sync_runs.error_detail`."""

    errors: int = 0
    error_detail: str | None = None

    def count(self, detail: str) -> None:
        self.errors += 1
        if self.error_detail is None:
            # One line: G2A's messages may carry newlines, and operators read this in a
            # table cell or a terminal line.
            self.error_detail = " ".join(detail.split())[:500]


@dataclass(frozen=True, slots=True)
class Progress:
    pages_done: int
    pages_total: int
    products: int
    errors: int
