"""Leader election and exactly-once firing for the scheduler processes (`keysync scheduler`).

Only the holder of `lock:scheduler:leader` fires. Firing a tick is one atomic claim in
Redis (`worker.tick_claim`: the caller still holds the lock, its clock agrees with Redis's
`TIME` within `MAX_CLOCK_SKEW_S`, the tick is not more than one period ahead, neither it nor
the following tick was fired; then the per-tick dedupe key is taken); only then is the
message enqueued. Hence:
  * a leader whose lock expired (a long pause, a partition) cannot fire, whatever it
    believes locally: losing the lock stops firing at once;
  * two firings of one tick (the leader's cron thread and its catch-up sweep, or an old
    and a new leader) enqueue once;
  * a tick missed while nobody led is fired once by the new leader's sweep on takeover,
    if it is still within the job's grace period.

Clock jumps. Deduplication is by tick identity only, never by a "highest tick fired" mark:
a mark can only go up, so one tick fired by a clock that had jumped a day ahead used to
silence the job for that day on every leader. Now such a tick is never fired at all (the
claim's two clock checks, both judged by Redis's clock, the one clock every scheduler
shares), and a tick key only ever names its own tick. On top of that, every election
round compares the process's clock with Redis's `TIME`: a process that disagrees by more
than `MAX_CLOCK_SKEW_S` steps down (or does not take over) with
`alert=scheduler_clock_skew`, and leads again once its clock agrees. What this process
remembers having fired is dropped when it lies ahead of its clock (the clock came back), so
it never silences a real tick.

Missed ticks coalesce: only the most recent due tick fires. Every scheduled job brings
state up to date (sync, poll, sweep, relay), so an older missed tick adds nothing.

Failure modes, chosen on purpose: if the broker rejects the message, the claim is rolled
back and the leader's next sweep retries the tick (within grace). If the process dies
between claim and enqueue (a sub-millisecond window) that tick is lost, and the next tick
covers it; we prefer that to the opposite order, which could enqueue twice. Actors are
idempotent anyway, so a rare duplicate would be harmless, but the scheduler never adds one.
The message is built here rather than sent through `worker.enqueue`: it carries the tick
in its options, and the claim above, not a transaction, is what makes it exactly-once.

What the processes publish for status (heartbeats, the leader's state) is
`worker.scheduler_state`; it is re-exported here.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import dramatiq
import redis
import structlog
from dramatiq import Message

from services.locks import SCHEDULER_LOCK, RedisLock
from services.metrics import SCHEDULER_CLOCK_SKEW, SCHEDULER_IS_LEADER, SCHEDULER_TICKS
from worker.schedule import ScheduledJob, latest_due_tick, tick_id
from worker.scheduler_state import (
    MEMBERS_KEY,
    SKEWED_KEY,
    STATE_KEY,
    JobState,
    Presence,
    SchedulerState,
    read_state,
)
from worker.tick_claim import Claim, TickClaim, TickClaims, ms

__all__ = [
    "MAX_CLOCK_SKEW_S",
    "MEMBERS_KEY",
    "SKEWED_KEY",
    "STATE_KEY",
    "Outcome",
    "ScheduleRunner",
    "SchedulerState",
    "process_identity",
    "read_state",
    "utc_now",
]

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]

# How far a scheduler's clock may be from Redis's `TIME` and still lead. Ticks are cron
# instants, so a leader a few seconds off fires a few seconds early or late, which no job
# minds; beyond that it would fire the wrong ticks. NTP keeps hosts within milliseconds.
MAX_CLOCK_SKEW_S = 5.0
# While a process stays skewed, the alert is repeated this often (log-based alerting).
_SKEW_REALERT_S = 60.0

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
    CLOCK_SKEW = "clock_skew"  # our clock disagrees with Redis's TIME: stepped down
    FUTURE_TICK = "future_tick"  # tick more than one period ahead of Redis's TIME: refused
    FAILED = "failed"  # Redis or the broker refused; retried by the next sweep


@dataclass
class ScheduleRunner:
    """Leader election plus firing, for one scheduler process.

    `step()` is called every `standby_interval_s` by the process (and once at start):
    it compares the process's clock with Redis's; a standby whose clock agrees tries to
    take the lock; a leader checks it still holds it (and steps down if its clock
    disagrees), fires any due tick not fired yet (the catch-up after a takeover) and
    publishes its state. The process's cron threads call `fire(name)` on each tick.
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
    # None turns the skew guard off (tests that drive a fake clock far from Redis's); the
    # refusal of ticks more than one period ahead of Redis's TIME always applies.
    max_clock_skew_s: float | None = MAX_CLOCK_SKEW_S
    _lock: RedisLock | None = field(default=None, repr=False)
    _since: datetime | None = field(default=None, repr=False)
    _fired: dict[str, datetime] = field(default_factory=dict, repr=False)
    _mutex: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _skew_alerted_at: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        names = [job.name for job in self.jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate schedule names in {names}")
        if self.max_clock_skew_s is not None and self.max_clock_skew_s <= 0:
            raise ValueError(f"max_clock_skew_s must be positive, got {self.max_clock_skew_s}")
        self._by_name = {job.name: job for job in self.jobs}
        self._claims = TickClaims(self.client, self.lock_name)
        self._presence = Presence(self.client, self.identity)
        self.log = log.bind(scheduler=self.identity)

    # --- leadership ------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        lock = self._lock
        return lock is not None and not lock.lost.is_set()

    @property
    def clock_skewed(self) -> bool:
        """True while this process refuses to lead because its clock disagrees with Redis."""
        return self._skew_alerted_at is not None

    def step(self) -> None:
        """One election round; never raises on Redis errors (the next round retries)."""
        try:
            redis_now, skew_s = self.measure_clock_skew()
            self._presence.heartbeat(redis_now)
            if self._skew_too_large(skew_s):
                self._refuse_to_lead(skew_s)
                return
            self._clock_agrees()
            if self._lock is not None and self._lock.lost.is_set():
                self._demote("lock lost")
            if self._lock is None:
                self._try_acquire()
            if self.is_leader:
                self.sweep()
                self._publish(redis_now)
        except redis.RedisError as exc:
            self.log.warning("scheduler step failed; retrying", error=str(exc))

    def measure_clock_skew(self) -> tuple[datetime, float]:
        """Redis's `TIME` and how far this process's clock is ahead of it (s, signed).

        Our clock is read before and after the call; their midpoint is compared, so the
        round trip does not count as skew.
        """
        before = self.clock()
        seconds, micros = self.client.time()
        after = self.clock()
        redis_now = datetime.fromtimestamp(seconds + micros / 1_000_000, UTC)
        local = before + (after - before) / 2
        skew_s = (local - redis_now).total_seconds()
        SCHEDULER_CLOCK_SKEW.set(skew_s)
        return redis_now, skew_s

    def _skew_too_large(self, skew_s: float) -> bool:
        return self.max_clock_skew_s is not None and abs(skew_s) > self.max_clock_skew_s

    def _refuse_to_lead(self, skew_s: float) -> None:
        """Our clock is off: step down, or stay a standby, and alert (repeated every minute
        while it lasts). Another scheduler with a sound clock takes over meanwhile."""
        was_leader = self._lock is not None
        if was_leader:
            self._demote("clock disagrees with Redis")
        self._presence.clock_skewed(skew_s)
        alerted = self._skew_alerted_at
        if was_leader or alerted is None or time.monotonic() - alerted >= _SKEW_REALERT_S:
            self._skew_alerted_at = time.monotonic()
            self.log.error(
                "scheduler clock disagrees with Redis TIME; not leading until it agrees",
                alert="scheduler_clock_skew",
                skew_s=round(skew_s, 3),
                max_skew_s=self.max_clock_skew_s,
                was_leader=was_leader,
            )

    def _clock_agrees(self) -> None:
        if self._skew_alerted_at is None:
            return
        self._skew_alerted_at = None
        self._presence.clock_agrees()
        self.log.info("scheduler clock agrees with Redis TIME again; eligible to lead")

    def _try_acquire(self) -> None:
        lock = RedisLock(self.client, self.lock_name, ttl_ms=self.leader_ttl_ms)
        if lock.acquire():
            with self._mutex:
                # Redis's tick keys are the truth for a new term; what we remember from an
                # earlier one can only be stale.
                self._fired.clear()
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
            self._presence.leave()
            if lock is not None and lock.release():
                self._presence.withdraw_state()
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
            if fired is not None and fired > now:
                # Remembered from before our clock came back: trusting it would skip every
                # real tick until the clock catches up with it again.
                del self._fired[name]
                fired = None
            tick = latest_due_tick(job.trigger, now, max(floor, fired) if fired else floor)
        if tick is None:
            return Outcome.NOTHING_DUE
        outcome = self._fire_tick(job, tick, lock.token, now)
        SCHEDULER_TICKS.labels(name, outcome).inc()
        return outcome

    def _fire_tick(self, job: ScheduledJob, tick: datetime, token: str, now: datetime) -> Outcome:
        max_skew_ms = -1 if self.max_clock_skew_s is None else int(self.max_clock_skew_s * 1000)
        bound = self.log.bind(job=job.name, tick=tick_id(tick))
        try:
            claimed = self._claims.claim(job, tick, token=token, now=now,
                                         max_skew_ms=max_skew_ms)
        except redis.RedisError as exc:
            bound.warning("tick claim failed; will retry", error=str(exc))
            return Outcome.FAILED
        if claimed.claim is not Claim.CLAIMED:
            return self._refused(claimed, job, tick, now, bound)
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
            try:
                self._claims.give_back(claimed, token)
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

    def _refused(self, claimed: TickClaim, job: ScheduledJob, tick: datetime, now: datetime,
                 bound: structlog.typing.FilteringBoundLogger) -> Outcome:
        if claimed.claim is Claim.NOT_LEADER:
            self._demote("leader lock held by another scheduler")
            return Outcome.LOST_LEADERSHIP
        if claimed.claim is Claim.CLOCK_SKEW:
            skew_s = (ms(now) - claimed.redis_ms) / 1000
            bound.error(
                "tick refused: scheduler clock disagrees with Redis TIME; stepping down",
                alert="scheduler_clock_skew",
                skew_s=round(skew_s, 3),
                max_skew_s=self.max_clock_skew_s,
            )
            self._skew_alerted_at = time.monotonic()
            self._demote("clock disagrees with Redis")
            return Outcome.CLOCK_SKEW
        if claimed.claim is Claim.FUTURE_TICK:
            bound.warning(
                "tick refused: more than one period ahead of Redis TIME",
                ahead_s=round((ms(tick) - claimed.redis_ms) / 1000, 3),
                period_s=claimed.period_ms / 1000,
            )
            return Outcome.FUTURE_TICK
        self._remember(job.name, tick)  # ALREADY_FIRED
        return Outcome.DUPLICATE

    def _remember(self, name: str, tick: datetime) -> None:
        with self._mutex:
            current = self._fired.get(name)
            if current is None or tick > current:
                self._fired[name] = tick

    # --- observability ---------------------------------------------------------------

    def next_fire_times(self) -> dict[str, datetime | None]:
        now = self.clock()
        return {job.name: job.trigger.get_next_fire_time(None, now) for job in self.jobs}

    def _publish(self, redis_now: datetime) -> None:
        now = self.clock()
        with self._mutex:
            fired = dict(self._fired)
        jobs: dict[str, JobState] = {
            name: {
                "actor": self._by_name[name].actor,
                "next_fire": nxt.isoformat() if nxt else None,
                "last_fired_tick": fired[name].isoformat() if name in fired else None,
            }
            for name, nxt in self.next_fire_times().items()
        }
        # Expires soon after the leader stops publishing, so status never shows a dead one.
        ttl_ms = max(int(self.standby_interval_s * 3000), self.leader_ttl_ms)
        self._presence.publish(since=self._since, now=now, jobs=jobs, ttl_ms=ttl_ms)
        self._presence.prune(redis_now, max(60.0, self.standby_interval_s * 10))
