"""Catalog: the G2A catalog sync and stock check.

`sync` runs them (lock, `sync_runs` row, steps, bookkeeping); `listing` pages through G2A,
`writer` upserts in fenced batches, `removal` confirms absent games before deactivating
them, `progress` publishes a run's progress, `pricing` turns G2A prices into ours, `retry`
says when a run that did not succeed is tried again, `errors` how a failure reads.
"""

from services.catalog.errors import (
    FENCED_OUT_DETAIL,
    LOCK_HELD_DETAIL,
    LockHeld,
    describe_error,
)
from services.catalog.model import Progress, SyncDeps, SyncResult, SyncSummary
from services.catalog.pricing import round_half_up, shop_price, shop_slug
from services.catalog.progress import SYNC_PROGRESS
from services.catalog.removal import REMOVAL_GUARD_DETAIL
from services.catalog.retry import RetryPolicy
from services.catalog.sync import (
    INCREMENTAL_OVERLAP,
    record_failed,
    record_lock_held,
    run_catalog_sync,
    run_stock_check,
)

__all__ = [
    "FENCED_OUT_DETAIL",
    "INCREMENTAL_OVERLAP",
    "LOCK_HELD_DETAIL",
    "REMOVAL_GUARD_DETAIL",
    "SYNC_PROGRESS",
    "LockHeld",
    "Progress",
    "RetryPolicy",
    "SyncDeps",
    "SyncResult",
    "SyncSummary",
    "describe_error",
    "record_failed",
    "record_lock_held",
    "round_half_up",
    "run_catalog_sync",
    "run_stock_check",
    "shop_price",
    "shop_slug",
]
