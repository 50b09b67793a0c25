"""The atomic claim of one scheduled tick: one Lua call that, in Redis,
  1. checks the caller's token still holds the leader lock,
  2. checks the caller's clock agrees with Redis's `TIME` (within the allowed skew),
  3. refuses a tick further in the future than one period of its job (by Redis's `TIME`),
  4. refuses a tick whose following tick was already fired (coalescing across leaders), and
  5. takes the per-tick dedupe key `SET sched:{job}:{tick} NX EX`.
A tick key only ever names its own tick (never a "highest tick fired" mark, which a clock
that jumped ahead could push past every real tick). `give_back` undoes our own claim when
the broker refused the message, so the next sweep retries the tick.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

import redis

from worker.schedule import ScheduledJob, next_tick, tick_id

# KEYS: leader lock, this tick's dedupe key, the following tick's dedupe key.
# ARGV: token, caller's now (ms), max skew (ms, -1 = off), tick (ms), period (ms), key TTL (s).
# Returns {status, Redis now (ms)}: the `Claim` values.
_CLAIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max_skew = tonumber(ARGV[3])
if max_skew >= 0 and math.abs(tonumber(ARGV[2]) - now) > max_skew then return {-2, now} end
if tonumber(ARGV[4]) - now > tonumber(ARGV[5]) then return {-3, now} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {0, now} end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[6]) then return {0, now} end
return {1, now}
"""

# Gives a claimed tick back (the broker refused the message); only our own claim.
_ROLLBACK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Claim(IntEnum):
    CLAIMED = 1
    ALREADY_FIRED = 0  # this tick or the following one
    NOT_LEADER = -1
    CLOCK_SKEW = -2  # the caller's clock is off
    FUTURE_TICK = -3  # more than one period ahead of Redis's TIME


@dataclass(frozen=True, slots=True)
class TickClaim:
    claim: Claim
    redis_ms: int  # Redis's TIME when judged (0 when the caller was not the leader)
    tick_key: str
    period_ms: int  # to the following tick; 0 when the cron has none


def ms(instant: datetime) -> int:
    return int(instant.timestamp() * 1000)


class TickClaims:
    """Claims ticks under the leader lock `lock_name`; raises `redis.RedisError`."""

    def __init__(self, client: redis.Redis, lock_name: str) -> None:
        self._lock_name = lock_name
        self._claim = client.register_script(_CLAIM)
        self._rollback = client.register_script(_ROLLBACK)

    def claim(self, job: ScheduledJob, tick: datetime, *, token: str, now: datetime,
              max_skew_ms: int) -> TickClaim:
        following = next_tick(job.trigger, tick)
        # The gap to the next tick; a cron with no further tick has no next period, and
        # then only "not in the future at all" is accepted.
        period_ms = int((following - tick).total_seconds() * 1000) if following else 0
        tick_key = f"sched:{job.name}:{tick_id(tick)}"
        next_key = f"sched:{job.name}:{tick_id(following)}" if following else tick_key + ":end"
        status, redis_ms = self._claim(
            keys=[self._lock_name, tick_key, next_key],
            args=[token, ms(now), max_skew_ms, ms(tick), period_ms, job.dedupe_ttl_s],
        )
        return TickClaim(Claim(int(status)), int(redis_ms), tick_key, period_ms)

    def give_back(self, claimed: TickClaim, token: str) -> None:
        self._rollback(keys=[claimed.tick_key], args=[token])
