"""Cache service: read-through with race protection, invalidation, graceful degradation."""

from services.cache import keys
from services.cache.outbox import CacheOutbox
from services.cache.service import Cache, CacheUnavailable, make_cache_redis

__all__ = ["Cache", "CacheOutbox", "CacheUnavailable", "keys", "make_cache_redis"]
