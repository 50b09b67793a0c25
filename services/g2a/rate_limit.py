"""A token bucket in Redis shared by every worker, scheduler and CLI process.

G2A counts requests per account, not per process, so the budget must be shared: one Lua
script refills and takes a token atomically, with Redis `TIME` as the only clock so hosts
with skewed clocks still agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from redis.commands.core import Script

from services.g2a.errors import G2ARateLimited

DEFAULT_KEY = "g2a:ratelimit"

# Returns 0 when a token was taken, else the microseconds until one will be available.
# Nothing is taken on a miss, so waiting callers do not push each other further back.
_TAKE_TOKEN = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate * 1000000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return wait
"""


class RateLimitTimeout(G2ARateLimited):
    """No token became available within the caller's timeout (our own limit, not G2A's)."""

    def __init__(self, message: str) -> None:
        super().__init__("LOCAL_RATE_LIMIT", message, None, retry_after=None)


class RateLimiter:
    """`rate_per_min` sustained, bursts of two seconds' worth (at least one request)."""

    def __init__(
        self,
        redis_client: redis.Redis,
        rate_per_min: int,
        *,
        key: str = DEFAULT_KEY,
        burst: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_min <= 0:
            raise ValueError("rate_per_min must be positive")
        self.rate_per_s = rate_per_min / 60.0
        self.burst = burst if burst is not None else max(1.0, self.rate_per_s * 2)
        self.key = key
        self._sleep = sleep
        self._script: Script = redis_client.register_script(_TAKE_TOKEN)

    def try_acquire(self) -> float:
        """Take a token if one is there; return 0.0, or the seconds to wait before retrying."""
        wait_us = int(self._script(keys=[self.key], args=[repr(self.rate_per_s), repr(self.burst)]))
        return wait_us / 1_000_000

    def acquire(self, timeout_s: float | None = None) -> None:
        """Block until a token is taken; raise `RateLimitTimeout` past `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait = self.try_acquire()
            if wait <= 0:
                return
            if deadline is not None and time.monotonic() + wait > deadline:
                # Tokens are never handed back, so a wait past the deadline cannot succeed.
                raise RateLimitTimeout(f"no G2A request token within {timeout_s} s")
            # A hair over the computed wait so the next attempt finds the token refilled
            # rather than spinning on a fraction of one.
            self._sleep(wait + 0.001)
