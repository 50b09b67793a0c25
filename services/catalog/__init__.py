"""Catalog: the G2A catalog sync and stock check.

`sync` runs them (lock, `sync_runs` row, steps, bookkeeping); `listing` pages through G2A,
`writer` upserts in fenced batches, `removal` confirms absent games before deactivating
them, `progress` publishes a run's progress, `pricing` turns G2A prices into ours.
"""

from services.catalog.errors import LockHeld
from services.catalog.model import Progress, SyncDeps, SyncResult, SyncSummary
from services.catalog.pricing import round_half_up, shop_price, shop_slug
from services.catalog.progress import SYNC_PROGRESS
from services.catalog.removal import REMOVAL_GUARD_DETAIL
from services.catalog.sync import INCREMENTAL_OVERLAP, run_catalog_sync, run_stock_check

__all__ = [
    "INCREMENTAL_OVERLAP",
    "REMOVAL_GUARD_DETAIL",
    "SYNC_PROGRESS",
    "LockHeld",
    "Progress",
    "SyncDeps",
    "SyncResult",
    "SyncSummary",
    "round_half_up",
    "run_catalog_sync",
    "run_stock_check",
    "shop_price",
    "shop_slug",
]
