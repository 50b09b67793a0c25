"""Leader election and exactly-once firing for the scheduler processes (`keysync scheduler`).

Only the holder of `lock:scheduler:leader` fires. Firing a tick is one Lua call that,
atomically in Redis,
  1. checks the caller's token still holds the leader lock,
  2. checks the tick is newer than the job's last fired tick (`sched:{job}:last`), and
  3. takes the per-tick dedupe key `SET sched:{job}:{tick} NX EX`;
only then is the message enqueued. Hence:
  * a leader whose lock expired (a long pause, a partition) cannot fire, whatever it
    believes locally: losing the lock stops firing at once;
  * two firings of one tick (the leader's cron thread and its catch-up sweep, or an old
    and a new leader) enqueue once;
  * a tick missed while nobody led is fired once by the new leader's sweep on takeover,
    if it is still within the job's grace period.

Missed ticks coalesce: only the most recent due tick fires. Every scheduled job brings
state up to date (sync, poll, sweep, relay), so an older missed tick adds nothing.

Failure modes, chosen on purpose: if the broker rejects the message, the claim is rolled
back and the leader's next sweep retries the tick (within grace). If the process dies
between claim and enqueue (a sub-millisecond window) that tick is lost, and the next tick
covers it; we prefer that to the opposite order, which could enqueue twice. Actors are
idempotent anyway, so a rare duplicate would be harmless, but the scheduler never adds one.
The message is built here rather than sent through `worker.enqueue`: it carries the tick
in its options, and the claim above, not a transaction, is what makes it exactly-once.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypedDict

import dramatiq
import redis
import structlog
from dramatiq import Message

from services.locks import SCHEDULER_LOCK, RedisLock
from services.metrics import SCHEDULER_IS_LEADER, SCHEDULER_TICKS
from worker.schedule import ScheduledJob, latest_due_tick, tick_id

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]

STATE_KEY = "sched:state"  # JSON written by the leader: who leads, next fire times
MEMBERS_KEY = "sched:members"  # hash identity -> last heartbeat (epoch s), every process

_CLAIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, ''} end
local last = redis.call('GET', KEYS[2])
if last and tonumber(last) >= tonumber(ARGV[2]) then return {0, last} end
if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'EX', ARGV[3]) then return {0, last or ''} end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[4])
return {1, last or ''}
"""

_ROLLBACK = """
redis.call('DEL', KEYS[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == '' then redis.call('DEL', KEYS[1])
  else redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
end
return 1
"""

# How long the high-water mark of a job survives without firing; long enough to outlive
# any schedule we use (twice a day) with a wide margin.
_LAST_TTL_S = 14 * 24 * 3600


def utc_now() -> datetime:
    return datetime.now(UTC)


def process_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Outcome(StrEnum):
    FIRED = "fired"
    NOTHING_DUE = "nothing_due"  # this tick was already fired (by us)
    DUPLICATE = "duplicate"  # another firing of this tick won the claim
    STANDBY = "standby"  # not the leader: skipped
    LOST_LEADERSHIP = "lost_leadership"  # believed we led; Redis says otherwise
    FAILED = "failed"  # Redis or the broker refused; retried by the next sweep


@dataclass
class ScheduleRunner:
    """Leader election plus firing, for one scheduler process.

    `step()` is called every `standby_interval_s` by the process (and once at start):
    a standby tries to take the lock; a leader checks it still holds it, fires any due
    tick not fired yet (the catch-up after a takeover) and publishes its state. The
    process's cron threads call `fire(name)` on each tick.
    """

    client: redis.Redis
    broker: dramatiq.Broker
    jobs: Sequence[ScheduledJob]
    identity: str = field(default_factory=process_identity)
    lock_name: str = SCHEDULER_LOCK
    # ttl 10 s, renewed every ttl/3 by RedisLock, standbys retry every 2 s: a dead
    # leader is replaced within ~12 s (< 15 s promised).
    leader_ttl_ms: int = 10_000
    standby_interval_s: float = 2.0
    clock: Clock = utc_now
    _lock: RedisLock | None = field(default=None, repr=False)
    _since: datetime | None = field(default=None, repr=False)
    _fired: dict[str, datetime] = field(default_factory=dict, repr=False)
    _mutex: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        names = [job.name for job in self.jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate schedule names in {names}")
        self._by_name = {job.name: job for job in self.jobs}
        self._claim = self.client.register_script(_CLAIM)
        self._rollback = self.client.register_script(_ROLLBACK)
        self.log = log.bind(scheduler=self.identity)

    # --- leadership ------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        lock = self._lock
        return lock is not None and not lock.lost.is_set()

    def step(self) -> None:
        """One election round; never raises on Redis errors (the next round retries)."""
        try:
            self._heartbeat()
            if self._lock is not None and self._lock.lost.is_set():
                self._demote("lock lost")
            if self._lock is None:
                self._try_acquire()
            if self.is_leader:
                self.sweep()
                self._publish()
        except redis.RedisError as exc:
            self.log.warning("scheduler step failed; retrying", error=str(exc))

    def _try_acquire(self) -> None:
        lock = RedisLock(self.client, self.lock_name, ttl_ms=self.leader_ttl_ms)
        if lock.acquire():
            self._lock = lock
            self._since = self.clock()
            SCHEDULER_IS_LEADER.set(1)
            self.log.info("scheduler leadership acquired")

    def _demote(self, reason: str) -> None:
        lock, self._lock = self._lock, None
        SCHEDULER_IS_LEADER.set(0)
        self.log.warning("scheduler leadership lost; standing by", reason=reason)
        if lock is not None:
            # Stops its renewal thread; the compare-and-delete cannot touch the lock of the
            # scheduler that holds it now.
            with contextlib.suppress(redis.RedisError):
                lock.release()

    def step_down(self) -> None:
        """Graceful stop: release the lock so a standby takes over at its next attempt."""
        lock, self._lock = self._lock, None
        SCHEDULER_IS_LEADER.set(0)
        try:
            self.client.hdel(MEMBERS_KEY, self.identity)
            if lock is not None and lock.release():
                self.client.delete(STATE_KEY)
        except redis.RedisError as exc:
            self.log.warning("scheduler step-down incomplete (redis)", error=str(exc))

    # --- firing ----------------------------------------------------------------------

    def sweep(self) -> dict[str, Outcome]:
        """Fire every job's latest due tick not fired yet (takeover catch-up, retries)."""
        return {job.name: self.fire(job.name) for job in self.jobs}

    def fire(self, name: str) -> Outcome:
        job = self._by_name[name]
        lock = self._lock
        if lock is None or lock.lost.is_set():
            SCHEDULER_TICKS.labels(name, Outcome.STANDBY).inc()
            return Outcome.STANDBY
        now = self.clock()
        with self._mutex:
            floor = now - timedelta(seconds=job.grace_s)
            fired = self._fired.get(name)
            tick = latest_due_tick(job.trigger, now, max(floor, fired) if fired else floor)
        if tick is None:
            return Outcome.NOTHING_DUE
        outcome = self._fire_tick(job, tick, lock.token, now)
        SCHEDULER_TICKS.labels(name, outcome).inc()
        return outcome

    def _fire_tick(self, job: ScheduledJob, tick: datetime, token: str, now: datetime) -> Outcome:
        tick_ms = str(int(tick.timestamp() * 1000))
        last_key = f"sched:{job.name}:last"
        tick_key = f"sched:{job.name}:{tick_id(tick)}"
        bound = self.log.bind(job=job.name, tick=tick_id(tick))
        try:
            status, previous = self._claim(
                keys=[self.lock_name, last_key, tick_key],
                args=[token, tick_ms, job.dedupe_ttl_s, _LAST_TTL_S],
            )
        except redis.RedisError as exc:
            bound.warning("tick claim failed; will retry", error=str(exc))
            return Outcome.FAILED
        if int(status) == -1:
            self._demote("leader lock held by another scheduler")
            return Outcome.LOST_LEADERSHIP
        if int(status) == 0:
            self._remember(job.name, tick)
            return Outcome.DUPLICATE
        message: Message[Any] = Message(
            queue_name=job.queue,
            actor_name=job.actor,
            args=job.args,
            kwargs={},
            # Lets operators (and tests) tie a message to the tick that produced it.
            options={"scheduled_tick": tick_id(tick), "scheduler": self.identity},
        )
        try:
            self.broker.enqueue(message)
        except Exception as exc:
            # Give the tick back so the next sweep retries it instead of losing it.
            prev = previous.decode() if isinstance(previous, bytes) else str(previous)
            try:
                self._rollback(keys=[last_key, tick_key], args=[tick_ms, prev, _LAST_TTL_S])
            except redis.RedisError:
                bound.error("tick rollback failed; this tick is lost", error=str(exc))
            bound.warning("enqueue failed; tick will be retried", error=str(exc))
            return Outcome.FAILED
        self._remember(job.name, tick)
        bound.info(
            "tick fired",
            actor=job.actor,
            message_id=message.message_id,
            late_s=round((now - tick).total_seconds(), 3),
        )
        return Outcome.FIRED

    def _remember(self, name: str, tick: datetime) -> None:
        with self._mutex:
            current = self._fired.get(name)
            if current is None or tick > current:
                self._fired[name] = tick

    # --- observability ---------------------------------------------------------------

    def next_fire_times(self) -> dict[str, datetime | None]:
        now = self.clock()
        return {job.name: job.trigger.get_next_fire_time(None, now) for job in self.jobs}

    def _heartbeat(self) -> None:
        self.client.hset(MEMBERS_KEY, self.identity, str(int(self.clock().timestamp())))

    def _publish(self) -> None:
        now = self.clock()
        with self._mutex:
            fired = dict(self._fired)
        state = {
            "leader": self.identity,
            "since": self._since.isoformat() if self._since else None,
            "updated_at": now.isoformat(),
            "jobs": {
                name: {
                    "actor": self._by_name[name].actor,
                    "next_fire": nxt.isoformat() if nxt else None,
                    "last_fired_tick": fired[name].isoformat() if name in fired else None,
                }
                for name, nxt in self.next_fire_times().items()
            },
        }
        # Expires soon after the leader stops publishing, so status never shows a dead one.
        ttl_ms = max(int(self.standby_interval_s * 3000), self.leader_ttl_ms)
        self.client.set(STATE_KEY, json.dumps(state), px=ttl_ms)
        self._prune_members(now)

    def _prune_members(self, now: datetime) -> None:
        stale_before = now.timestamp() - max(60.0, self.standby_interval_s * 10)
        members = self.client.hgetall(MEMBERS_KEY)
        stale = [name for name, seen in members.items() if float(seen) < stale_before]
        if stale:
            self.client.hdel(MEMBERS_KEY, *stale)


class SchedulerState(TypedDict):
    leader: str | None
    leader_since: str | None
    lock_held: bool
    schedulers: list[str]
    # Per job: actor, next_fire, last_fired_tick (ISO times), as the leader published them.
    jobs: dict[str, dict[str, str | None]]


def read_state(client: redis.Redis, *, now: datetime | None = None) -> SchedulerState:
    """What `keysync status` shows: the leader's published state and live schedulers."""
    raw = client.get(STATE_KEY)
    state: dict[str, Any] = json.loads(raw) if raw else {}
    holder = client.get(SCHEDULER_LOCK)
    current = (now or utc_now()).timestamp()
    members: Mapping[Any, Any] = client.hgetall(MEMBERS_KEY)
    live = sorted(_text(name) for name, seen in members.items() if current - float(seen) < 30)
    return {
        "leader": state.get("leader") if holder else None,
        "leader_since": state.get("since") if holder else None,
        "lock_held": holder is not None,
        "schedulers": live,
        "jobs": state.get("jobs", {}) if holder else {},
    }


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
