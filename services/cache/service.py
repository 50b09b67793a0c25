"""The cache service: JSON values in Redis in front of PostgreSQL.

Three guarantees, each cheap on the hot path:
- **No stale write-back.** Every key has a generation counter `gen:{key}` (and each indexed
  family one `gen:family:{prefix}`) that invalidation increments. A read-through remembers
  the generation it saw before loading from Postgres and stores its value only if it is
  unchanged (one Lua call), so a value computed before an invalidation never lands after it.
- **Cheap pattern invalidation.** Keys of the families in `keys.FAMILIES` are indexed in a
  tag set on write; invalidating `catalog:*` is one Lua call that unlinks the set's members
  (O(keys removed), measured in bench/invalidation.py). Other patterns fall back to
  SCAN + UNLINK in batches. `KEYS` is never used.
- **Graceful degradation.** Short socket timeouts and a circuit breaker: once Redis fails
  `fail_max` times in a row, calls stop reaching it for `reset_timeout` seconds and cost
  nothing. Reads then go to Postgres, writes are skipped, and invalidations are recorded in
  the Postgres outbox. Cached reads stay bypassed until the outbox has been replayed, so no
  entry made stale during the outage is served after it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import TypeVar

import pybreaker
import redis
import structlog
from pydantic import JsonValue
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.cache import keys as cache_keys
from services.cache.outbox import CacheOutbox
from services.metrics import (
    CACHE_INVALIDATION_SECONDS,
    CACHE_INVALIDATIONS_DEFERRED,
    CACHE_REQUESTS,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Generation counters must outlive any entry they protect; the longest TTL is 24 h.
GEN_TTL_MS = (cache_keys.SESSION_TTL + cache_keys.HOUR) * 1000
_UNLINK_BATCH = 500

_INVALIDATE_KEYS = """
local removed = 0
for _, key in ipairs(KEYS) do
  removed = removed + redis.call('UNLINK', key)
  local gen = 'gen:' .. key
  redis.call('INCR', gen)
  redis.call('PEXPIRE', gen, ARGV[1])
end
return removed
"""

_INVALIDATE_FAMILY = """
local members = redis.call('SMEMBERS', KEYS[1])
local removed = 0
for i = 1, #members, 500 do
  removed = removed + redis.call('UNLINK', unpack(members, i, math.min(i + 499, #members)))
end
redis.call('DEL', KEYS[1])
redis.call('INCR', KEYS[2])
return removed
"""

# KEYS: key, gen:key, [gen:family, tag:family]; ARGV: value, ttl_ms, seen_gen, [seen_family_gen]
_SET_IF_FRESH = """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[3] then return 0 end
if #KEYS == 4 then
  if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[4] then return 0 end
  redis.call('SADD', KEYS[4], KEYS[1])
  redis.call('PEXPIRE', KEYS[4], ARGV[2])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class CacheUnavailable(Exception):
    """Redis could not be reached (or the breaker is open)."""


def make_cache_redis(url: str, *, timeout_s: float = 0.1) -> redis.Redis:
    """A Redis client for the cache: fail fast, never retry (the breaker decides)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )


def _json_default(value: object) -> object:
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"cannot cache {type(value).__name__}")


def encode(value: object) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def decode(raw: str | bytes) -> JsonValue:
    value: JsonValue = json.loads(raw)
    return value


# Bookkeeping keys beside the cached ones: generation counters per key and per family, and
# each family's tag set of member keys.
_gen_key = "gen:{}".format
_family_gen_key = "gen:family:{}".format
_tag_key = "tag:{}".format


class Cache:
    def __init__(
        self,
        client: redis.Redis,
        outbox: CacheOutbox | None = None,
        *,
        fail_max: int = 3,
        reset_timeout_s: float = 5.0,
    ) -> None:
        self._redis = client
        self._outbox = outbox
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max, reset_timeout=reset_timeout_s, name="redis-cache"
        )
        self._invalidate_keys = client.register_script(_INVALIDATE_KEYS)
        self._invalidate_family = client.register_script(_INVALIDATE_FAMILY)
        self._set_if_fresh = client.register_script(_SET_IF_FRESH)
        # Until the outbox has been replayed against this Redis, cached values may be stale
        # (an outage, or a process that starts after one), so reads bypass the cache.
        self._needs_replay = outbox is not None
        self._replay_lock = threading.Lock()

    @property
    def degraded(self) -> bool:
        return self._needs_replay or self.breaker.current_state != pybreaker.STATE_CLOSED

    def probe(self) -> bool:
        """Whether cached reads are served now; recovers first if Redis is back (replaying
        the outbox), so a health check right after start-up reports the truth."""
        return self._usable()

    # --- reads -------------------------------------------------------------------------

    def get(self, key: str) -> JsonValue:
        if not self._usable():
            CACHE_REQUESTS.labels("bypass").inc()
            return None
        try:
            raw = self._call(lambda: self._redis.get(key))
        except CacheUnavailable:
            CACHE_REQUESTS.labels("bypass").inc()
            return None
        CACHE_REQUESTS.labels("hit" if raw is not None else "miss").inc()
        return None if raw is None else decode(raw)

    def set(self, key: str, value: object, ttl_s: int) -> bool:
        """Store unconditionally (for values just written to Postgres). False if skipped."""
        if not self._usable():
            return False
        family = cache_keys.family_of(key)
        payload = encode(value)

        def write() -> None:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(key, payload, ex=ttl_s)
                if family:
                    pipe.sadd(_tag_key(family), key)
                    pipe.expire(_tag_key(family), ttl_s)
                pipe.execute()

        try:
            self._call(write)
        except CacheUnavailable:
            return False
        return True

    def read_through(self, key: str, ttl_s: int, loader: Callable[[], T]) -> JsonValue:
        """Cached JSON value of `key`, loading from Postgres (and caching) on a miss.

        Returns the JSON form of the loader's result, so hits and misses look the same.
        """
        if not self._usable():
            CACHE_REQUESTS.labels("bypass").inc()
            return decode(encode(loader()))
        family = cache_keys.family_of(key)
        watched = [key, _gen_key(key)] + ([_family_gen_key(family)] if family else [])
        try:
            cached, *generations = self._call(lambda: self._redis.mget(watched))
        except CacheUnavailable:
            CACHE_REQUESTS.labels("bypass").inc()
            return decode(encode(loader()))
        if cached is not None:
            CACHE_REQUESTS.labels("hit").inc()
            return decode(cached)
        CACHE_REQUESTS.labels("miss").inc()
        payload = encode(loader())
        seen = [g.decode() if isinstance(g, bytes) else (g or "0") for g in generations]
        script_keys = [key, _gen_key(key)]
        if family:
            script_keys += [_family_gen_key(family), _tag_key(family)]
        with contextlib.suppress(CacheUnavailable):
            self._call(
                lambda: self._set_if_fresh(keys=script_keys, args=[payload, ttl_s * 1000, *seen])
            )
        return decode(payload)

    # --- invalidation ------------------------------------------------------------------
    #
    # One path: `_remove_keys` / `_remove_pattern` talk to Redis and raise CacheUnavailable;
    # the public calls defer what failed to the outbox, and the outbox replay runs the same
    # two functions (`_apply`) for the rows it holds.

    def invalidate(self, keys: Iterable[str]) -> int:
        """Remove exact keys (and bump their generations). Returns how many existed."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return 0
        try:
            return self._remove_keys(unique)
        except CacheUnavailable:
            self._defer(unique, is_pattern=False)
            return 0

    def invalidate_pattern(self, pattern: str) -> int:
        """Remove every key matching a glob pattern. Indexed families never scan."""
        try:
            return self._remove_pattern(pattern)
        except CacheUnavailable:
            self._defer([pattern], is_pattern=True)
            return 0

    def invalidate_all(self, keys: Sequence[str] = (), patterns: Sequence[str] = ()) -> int:
        """The one call write paths make after commit: exact keys plus patterns."""
        return self.invalidate(keys) + sum(self.invalidate_pattern(p) for p in patterns)

    def _remove_keys(self, keys: list[str]) -> int:
        started = time.perf_counter()
        removed = 0
        for i in range(0, len(keys), _UNLINK_BATCH):
            batch = keys[i : i + _UNLINK_BATCH]
            removed += int(self._call(
                lambda b=batch: self._invalidate_keys(keys=b, args=[GEN_TTL_MS])  # type: ignore[misc]
            ))
        elapsed = time.perf_counter() - started
        CACHE_INVALIDATION_SECONDS.labels("keys").observe(elapsed)
        log.info(
            "cache invalidated",
            keys=keys if len(keys) <= 10 else len(keys),
            removed=removed,
            latency_ms=round(elapsed * 1000, 3),
        )
        return removed

    def _remove_pattern(self, pattern: str) -> int:
        started = time.perf_counter()
        family = cache_keys.family_of(pattern)
        if family is not None and pattern == family + "*":
            kind = "family"
            removed = int(self._call(
                lambda: self._invalidate_family(keys=[_tag_key(family), _family_gen_key(family)])
            ))
        else:
            kind = "scan"
            removed = self._call(lambda: self._scan_unlink(pattern))
        elapsed = time.perf_counter() - started
        CACHE_INVALIDATION_SECONDS.labels(kind).observe(elapsed)
        log.info(
            "cache pattern invalidated",
            pattern=pattern,
            method=kind,
            removed=removed,
            latency_ms=round(elapsed * 1000, 3),
        )
        return removed

    def _apply(self, keys: list[str], patterns: list[str]) -> None:
        """Outbox rows against Redis now; raises CacheUnavailable (the rows stay) if it is down."""
        if keys:
            self._remove_keys(list(dict.fromkeys(keys)))
        for pattern in dict.fromkeys(patterns):
            self._remove_pattern(pattern)

    def _scan_unlink(self, pattern: str) -> int:
        removed = 0
        batch: list[bytes] = []
        for key in self._redis.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= _UNLINK_BATCH:
                removed += int(self._invalidate_keys(keys=batch, args=[GEN_TTL_MS]))
                batch = []
        if batch:
            removed += int(self._invalidate_keys(keys=batch, args=[GEN_TTL_MS]))
        return removed

    # --- degradation -------------------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return self.breaker.call(fn)
        except (redis.RedisError, pybreaker.CircuitBreakerError, OSError) as exc:
            if not self._needs_replay and self._outbox is not None:
                log.warning("redis cache unavailable; degrading to postgres", error=str(exc))
            self._needs_replay = self._outbox is not None
            raise CacheUnavailable(str(exc)) from exc

    def _usable(self) -> bool:
        """True when cached reads and writes may be used; replays the outbox on recovery."""
        if not self._needs_replay:
            return self.breaker.current_state == pybreaker.STATE_CLOSED
        if self._outbox is None or not self._replay_lock.acquire(blocking=False):
            return False
        try:
            self._call(self._redis.ping)
            self._outbox.replay(self._apply)
            self._needs_replay = False
            log.info("redis cache recovered; outbox replayed")
            return True
        except CacheUnavailable:
            return False
        except Exception as exc:  # Postgres down too: stay degraded, try again later
            log.warning("cache outbox replay failed; staying degraded", error=str(exc))
            return False
        finally:
            self._replay_lock.release()

    def _defer(self, targets: list[str], *, is_pattern: bool) -> None:
        CACHE_INVALIDATIONS_DEFERRED.inc(len(targets))
        if self._outbox is None:
            log.error("cache invalidation lost: redis down and no outbox", targets=targets)
            return
        try:
            self._outbox.record(targets, is_pattern=is_pattern)
        except Exception as exc:
            # Nothing else can be done: both stores are down. TTLs bound the staleness.
            log.error(
                "cache invalidation lost: outbox write failed", targets=targets, error=str(exc)
            )
            return
        log.warning(
            "cache invalidation deferred to outbox", count=len(targets), is_pattern=is_pattern
        )

    def replay_outbox(self) -> int:
        """Apply the Postgres outbox now; raises CacheUnavailable while Redis is down."""
        return 0 if self._outbox is None else self._outbox.replay(self._apply)
