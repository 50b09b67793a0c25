"""Sign-in rate limits (CONTRACT §3, §5): per email and per client address, kept in Redis.

Algorithm: the sliding-window counter (Cloudflare's, and `limits`'
`SlidingWindowCounterRateLimiter`). Each identity keeps the attempt counts of the current
and the previous fixed window; the estimate for the sliding window ending now is
`previous * (share of the previous window still inside it) + current`. An attempt is
allowed while the estimate + 1 stays within the limit, and only allowed attempts are
counted, so hammering while refused does not push the end of the refusal further away.
Unlike a plain fixed window it does not let twice the limit through around a window edge.
One Lua call does it atomically per identity with Redis `TIME` as the only clock, so every
web process shares the counts and agrees on time; a hash of three numbers per identity,
expiring two windows after its last allowed attempt.

Why not the `limits` library: its `redis` extra requires redis-py < 8 (we run 8.x) and its
async Redis storage is `coredis`, a second client; the part we need is the script below.

Redis down: the limits are kept per process (the same algorithm in memory) rather than
dropped, and the switch is logged at error level (`alert=login_rate_limit_degraded`) and
counted (`keysync_login_rate_checks_total{backend="memory"}`): never a silent fail-open.
A circuit breaker stops trying Redis for `reset_timeout_s` after a failure, so an outage
costs one connection attempt per 5 s, not one per login. With N web processes an attacker
gets at most N times the limit while Redis is down.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pybreaker
import redis
import structlog
from prometheus_client import Counter
from redis.commands.core import Script

from keysync.settings import Settings
from services.accounts.errors import LoginRateLimited

log = structlog.get_logger(__name__)

WINDOW_S = 60.0
# Redis keys: one hash per limited identity; the identity is hashed, so an email is never
# stored in Redis and no character of it can act as a glob or separator.
KEY_PREFIX = "ratelimit:login"

RATE_CHECKS = Counter(
    "keysync_login_rate_checks_total", "Sign-in rate-limit checks", ["scope", "backend", "outcome"]
)  # scope: email | address; backend: redis | memory; outcome: allowed | limited

# KEYS[1]: the identity's hash; ARGV: limit, window_ms. Returns 0 when the attempt is
# allowed (and counted), else the milliseconds until one would be allowed.
_HIT = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local index = math.floor(now / window)
local state = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local w = tonumber(state[1])
local current = tonumber(state[2]) or 0
local previous = tonumber(state[3]) or 0
if w == nil or w < index - 1 then
  current, previous = 0, 0
elseif w == index - 1 then
  previous, current = current, 0
elseif w > index then
  -- Redis' clock went back (a failover): stay in the stored window, the stricter reading.
  index = w
end
local elapsed = math.max(0, now - index * window)
if previous * (window - elapsed) / window + current + 1 <= limit then
  redis.call('HSET', KEYS[1], 'w', index, 'c', current + 1, 'p', previous)
  redis.call('PEXPIRE', KEYS[1], 2 * window)
  return 0
end
local wait
if current + 1 <= limit then
  -- later in this window, once the previous window's share has shrunk enough
  wait = window * (1 - (limit - current - 1) / previous) - elapsed
else
  -- in the next window, once this window's share has shrunk enough
  wait = (window - elapsed) + window * (1 - (limit - 1) / current)
end
return math.max(1, math.ceil(wait))
"""


def _wait_ms(limit: int, window_ms: int, elapsed: int, current: int, previous: int) -> int:
    """`_HIT`'s arithmetic for the in-memory fallback: 0 when allowed, else ms to wait."""
    if previous * (window_ms - elapsed) / window_ms + current + 1 <= limit:
        return 0
    if current + 1 <= limit:
        wait = window_ms * (1 - (limit - current - 1) / previous) - elapsed
    else:
        wait = (window_ms - elapsed) + window_ms * (1 - (limit - 1) / current)
    return max(1, math.ceil(wait))


class _MemoryWindows:
    """The per-process fallback: the same counters in a dict, on the monotonic clock."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self._window_ms = int(window_s * 1000)
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[str, tuple[int, int, int]] = {}  # key -> (window, current, previous)
        self._pruned_at = -1

    def hit(self, key: str, limit: int) -> int:
        now = int(self._clock() * 1000)
        index, elapsed = divmod(now, self._window_ms)
        with self._lock:
            if index != self._pruned_at:
                # Once per window: forget identities with nothing in the last two windows,
                # so memory follows recent attempts, not every address ever seen.
                self._state = {k: v for k, v in self._state.items() if v[0] >= index - 1}
                self._pruned_at = index
            w, current, previous = self._state.get(key, (index, 0, 0))
            if w < index - 1:
                current, previous = 0, 0
            elif w == index - 1:
                previous, current = current, 0
            wait = _wait_ms(limit, self._window_ms, elapsed, current, previous)
            if wait == 0:
                self._state[key] = (index, current + 1, previous)
            return wait


class _LogTransitions(pybreaker.CircuitBreakerListener):
    def state_change(
        self, cb: pybreaker.CircuitBreaker, old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        if new_state.name == pybreaker.STATE_OPEN:
            log.error("sign-in rate limits kept per process: Redis unavailable",
                      alert="login_rate_limit_degraded")
        elif new_state.name == pybreaker.STATE_CLOSED and old_state is not None:
            log.info("sign-in rate limits back on Redis")


class SlidingWindowLimiter:
    """Attempts per identity per window, shared through Redis, per process without it."""

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        window_s: float = WINDOW_S,
        key_prefix: str = KEY_PREFIX,
        clock: Callable[[], float] = time.monotonic,
        reset_timeout_s: float = 5.0,
    ) -> None:
        self.window_s = window_s
        self.key_prefix = key_prefix
        self._script: Script = redis_client.register_script(_HIT)
        self._memory = _MemoryWindows(window_s, clock)
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=1, reset_timeout=reset_timeout_s, name="redis-login-limits",
            listeners=[_LogTransitions()],
        )

    def key(self, scope: str, identity: str) -> str:
        digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{self.key_prefix}:{scope}:{digest}"

    def hit(self, scope: str, identity: str, limit: int) -> float:
        """Count one attempt if allowed: 0.0, else the seconds until one would be."""
        key = self.key(scope, identity)
        args = [limit, int(self.window_s * 1000)]
        try:
            wait_ms = int(self.breaker.call(self._script, keys=[key], args=args))
            backend = "redis"
        except (redis.RedisError, pybreaker.CircuitBreakerError, OSError):
            # Logged once per outage by the breaker's listener; counted on every check.
            wait_ms = self._memory.hit(key, limit)
            backend = "memory"
        RATE_CHECKS.labels(scope, backend, "limited" if wait_ms else "allowed").inc()
        return wait_ms / 1000

    @property
    def degraded(self) -> bool:
        return self.breaker.current_state != pybreaker.STATE_CLOSED


@dataclass(frozen=True)
class LoginLimits:
    """CONTRACT §5's two limits over one limiter; a limit of 0 is off."""

    limiter: SlidingWindowLimiter
    per_email_per_min: int
    per_address_per_min: int

    @classmethod
    def from_settings(cls, redis_client: redis.Redis, settings: Settings) -> LoginLimits:
        return cls(
            SlidingWindowLimiter(redis_client),
            per_email_per_min=settings.login_rate_per_min,
            per_address_per_min=settings.login_rate_per_address_per_min,
        )

    def check_address(self, address: str) -> None:
        """Count a sign-in attempt from `address` (the socket peer); LoginRateLimited past
        the limit. Checked before anything else, so a flood costs no database work."""
        self._check("address", address, self.per_address_per_min)

    def check_email(self, folded_email: str) -> None:
        """Count an attempt at `folded_email` (Postgres `lower()` of the typed address, so
        every spelling of one account shares the count, whether or not it exists)."""
        self._check("email", folded_email, self.per_email_per_min)

    def _check(self, scope: str, identity: str, per_min: int) -> None:
        if per_min <= 0:
            return
        # The limiter's window is a minute except in tests, which shorten it to wait less.
        wait_s = self.limiter.hit(scope, identity, per_min)
        if wait_s > 0:
            log.info("sign-in attempt rate limited", scope=scope, retry_after_s=wait_s)
            raise LoginRateLimited(math.ceil(wait_s))
