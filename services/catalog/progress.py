"""A run's progress in Redis (`g2a:sync:progress`), for operators (`keysync status`)."""

from __future__ import annotations

from datetime import datetime

import redis
import structlog
from redis.typing import EncodableT, FieldT

from services.catalog.listing import Listing
from services.catalog.model import SyncResult

log = structlog.get_logger(__name__)

# The one spelling of the key: `keysync status` reads what runs write here.
SYNC_PROGRESS = "g2a:sync:progress"
_PROGRESS_TTL_S = 7 * 24 * 3600


def publish(client: redis.Redis, result: SyncResult, listing: Listing, started_at: datetime,
            *, final: bool) -> None:
    """Best effort: progress is for operators; a Redis hiccup must not fail the run."""
    mapping: dict[FieldT, EncodableT] = {
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
