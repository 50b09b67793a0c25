"""What the scheduler processes keep in Redis for operators, and `read_state` reading it.

Every process heartbeats `MEMBERS_KEY` each election round (in Redis's time, so a process
with a skewed clock still looks alive, and only alive) and, while its clock disagrees with
Redis's `TIME`, records how far in `SKEWED_KEY`. The leader publishes `STATE_KEY` (who
leads, since when, each job's next fire and last fired tick) with a short TTL, so status
never shows a leader that stopped publishing. Nothing here decides who leads or fires.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

import redis

from services.locks import SCHEDULER_LOCK

STATE_KEY = "sched:state"  # JSON written by the leader: who leads, next fire times
MEMBERS_KEY = "sched:members"  # hash identity -> last heartbeat (Redis epoch s), every process
SKEWED_KEY = "sched:clock_skew"  # hash identity -> seconds its clock is off, while refused

# A scheduler heard from this recently counts as live in `read_state`.
_LIVE_S = 30


class JobState(TypedDict):
    actor: str
    next_fire: str | None  # ISO times
    last_fired_tick: str | None


class SchedulerState(TypedDict):
    leader: str | None
    leader_since: str | None
    lock_held: bool
    schedulers: list[str]
    # Live schedulers refusing to lead because their clock disagrees with Redis's TIME:
    # identity -> seconds ahead (negative: behind).
    clock_skewed: dict[str, float]
    # Per job: actor, next_fire, last_fired_tick (ISO times), as the leader published them.
    jobs: dict[str, dict[str, str | None]]


@dataclass(frozen=True)
class Presence:
    """One scheduler process's entries in the keys above."""

    client: redis.Redis
    identity: str

    def heartbeat(self, redis_now: datetime) -> None:
        self.client.hset(MEMBERS_KEY, self.identity, str(int(redis_now.timestamp())))

    def clock_skewed(self, skew_s: float) -> None:
        self.client.hset(SKEWED_KEY, self.identity, f"{skew_s:.3f}")

    def clock_agrees(self) -> None:
        self.client.hdel(SKEWED_KEY, self.identity)

    def publish(self, *, since: datetime | None, now: datetime, jobs: dict[str, JobState],
                ttl_ms: int) -> None:
        """The leader's state, expiring `ttl_ms` after its last publication."""
        state = {
            "leader": self.identity,
            "since": since.isoformat() if since else None,
            "updated_at": now.isoformat(),
            "jobs": jobs,
        }
        self.client.set(STATE_KEY, json.dumps(state), px=ttl_ms)

    def prune(self, redis_now: datetime, stale_after_s: float) -> None:
        """Forget processes not heard from for `stale_after_s`."""
        stale_before = redis_now.timestamp() - stale_after_s
        members = self.client.hgetall(MEMBERS_KEY)
        stale = [name for name, seen in members.items() if float(seen) < stale_before]
        if stale:
            self.client.hdel(MEMBERS_KEY, *stale)
            self.client.hdel(SKEWED_KEY, *stale)

    def leave(self) -> None:
        self.client.hdel(MEMBERS_KEY, self.identity)
        self.client.hdel(SKEWED_KEY, self.identity)

    def withdraw_state(self) -> None:
        """The leader stepped down: status shows no leader rather than a stale one."""
        self.client.delete(STATE_KEY)


def read_state(client: redis.Redis, *, now: datetime | None = None) -> SchedulerState:
    """What `keysync status` shows: the leader's published state and live schedulers.

    Heartbeats are in Redis's time, so liveness is judged by Redis's `TIME` unless `now`
    is given.
    """
    raw = client.get(STATE_KEY)
    state: dict[str, Any] = json.loads(raw) if raw else {}
    holder = client.get(SCHEDULER_LOCK)
    if now is None:
        seconds, micros = client.time()
        current = seconds + micros / 1_000_000
    else:
        current = now.timestamp()
    members: Mapping[Any, Any] = client.hgetall(MEMBERS_KEY)
    live = sorted(_text(name) for name, seen in members.items()
                  if current - float(seen) < _LIVE_S)
    skewed: Mapping[Any, Any] = client.hgetall(SKEWED_KEY)
    return {
        "leader": state.get("leader") if holder else None,
        "leader_since": state.get("since") if holder else None,
        "lock_held": holder is not None,
        "schedulers": live,
        "clock_skewed": {
            _text(name): float(skew) for name, skew in skewed.items() if _text(name) in live
        },
        "jobs": state.get("jobs", {}) if holder else {},
    }


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
