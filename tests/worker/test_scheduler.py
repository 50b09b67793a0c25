"""Scheduler: exactly one enqueue per tick across several schedulers, failover, catch-up,
clock jumps.

The in-process tests drive `ScheduleRunner` with an injected clock; the end-to-end test
runs three real scheduler processes (second-level cron, short lock TTL) against one
Redis, kills the leader with SIGKILL and checks the broker's queue tick by tick. The
clock-jump tests use a clock offset from the real one, so Redis's `TIME` (the reference
every scheduler is judged by) stays the real time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import structlog
from apscheduler.triggers.cron import CronTrigger

import jobs
from services.locks import SCHEDULER_LOCK
from tests.helpers import wait_until
from worker.election import MAX_CLOCK_SKEW_S, STATE_KEY, Outcome, ScheduleRunner, read_state
from worker.enqueue import Actor
from worker.schedule import Every, ScheduledJob, collect, cron_trigger, latest_due_tick, tick_id
from worker.scheduler import build

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
EVERY_10S = CronTrigger(second="*/10", timezone=UTC)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def queued(redis_client: Any, queue: str = "default") -> list[dict[str, Any]]:
    """Every message waiting in the broker's queue (dramatiq's Redis layout)."""
    raw = redis_client.hgetall(f"dramatiq:{queue}.msgs")
    return [json.loads(value) for value in raw.values()]


def ticks_of(messages: list[dict[str, Any]], actor: str) -> list[str]:
    return sorted(m["options"]["scheduled_tick"] for m in messages if m["actor_name"] == actor)


def runner(redis_client: Any, broker: Any, clock: FakeClock, name: str) -> ScheduleRunner:
    job = ScheduledJob("probe", "sched_probe", EVERY_10S, ("x",), grace_s=10)
    # These tests move a fake clock through 2026-01-01 at will, far from Redis's TIME: the
    # skew guard is off for them and has tests of its own below.
    return ScheduleRunner(redis_client, broker, [job], identity=name, clock=clock,
                          max_clock_skew_s=None)


def test_latest_due_tick_walks_the_cron_in_utc() -> None:
    assert latest_due_tick(EVERY_10S, T0 + timedelta(seconds=25), T0) == T0 + timedelta(seconds=20)
    assert latest_due_tick(EVERY_10S, T0 + timedelta(seconds=20), T0) == T0 + timedelta(seconds=20)
    # `after` is exclusive: the tick at T0 is not "due after T0".
    assert latest_due_tick(EVERY_10S, T0 + timedelta(seconds=5), T0) is None
    twice_a_day = CronTrigger.from_crontab("0 2,14 * * *", timezone=UTC)
    assert latest_due_tick(twice_a_day, T0, T0 - timedelta(hours=11)) == T0.replace(hour=2)


def test_default_schedule_names_the_actors_and_full_scheduled_syncs(settings: Any) -> None:
    assert (settings.sync_cron, settings.stock_check_cron) == ("0 2,14 * * *", "*/15 * * * *")
    scheduled = {job.name: job for job in jobs.schedule(settings)}
    assert set(scheduled) == {
        "catalog_sync",
        "stock_check",
        "poll_order_status",
        "sweep_webhook_events",
        "relay_job_outbox",
        "replay_cache_outbox",
    }
    assert all(job.actor == name for name, job in scheduled.items())
    assert scheduled["catalog_sync"].args == (True,)
    assert scheduled["catalog_sync"].grace_s == 3600
    assert scheduled["catalog_sync"].trigger.get_next_fire_time(None, T0) == T0.replace(hour=14)
    assert scheduled["stock_check"].trigger.get_next_fire_time(
        None, T0 + timedelta(seconds=1)) == T0.replace(minute=15)
    assert scheduled["poll_order_status"].trigger.get_next_fire_time(
        None, T0 + timedelta(seconds=1)
    ) == T0 + timedelta(minutes=1)
    assert scheduled["replay_cache_outbox"].trigger.get_next_fire_time(
        None, T0 + timedelta(seconds=1)
    ) == T0 + timedelta(seconds=10)
    # Every scheduled actor is one `jobs` declares.
    assert {job.actor for job in scheduled.values()} <= set(jobs.broker.get_declared_actors())


def test_the_operator_crons_apply(settings: Any) -> None:
    custom = settings.model_copy(
        update={"sync_cron": "30 3 * * *", "stock_check_cron": "5 * * * *"})
    scheduled = {job.name: job for job in jobs.schedule(custom)}
    assert scheduled["catalog_sync"].trigger.get_next_fire_time(None, T0) == (
        T0 + timedelta(days=1)).replace(hour=3, minute=30)
    assert scheduled["stock_check"].trigger.get_next_fire_time(None, T0) == T0.replace(minute=5)


def test_schedule_declarations_are_checked(settings: Any) -> None:
    with pytest.raises(ValueError, match="5 or 6 fields"):
        cron_trigger("* * *")
    twice = Every(Actor.STOCK_CHECK, "* * * * *", grace_s=60)
    with pytest.raises(ValueError, match="scheduled twice"):
        collect(settings, [twice, twice])


def test_only_the_leader_fires_and_each_tick_once(redis_client: Any, broker: Any) -> None:
    clock = FakeClock(T0 + timedelta(seconds=1))
    a, b = runner(redis_client, broker, clock, "a"), runner(redis_client, broker, clock, "b")
    try:
        a.step()  # leader; its first sweep fires the tick at T0 (within grace)
        b.step()
        assert a.is_leader and not b.is_leader
        assert b.fire("probe") is Outcome.STANDBY
        assert a.fire("probe") is Outcome.NOTHING_DUE

        # A second firing path that does not know the tick was fired (another thread, a
        # restarted leader) is refused by Redis, not by local memory.
        a._fired.clear()
        assert a.fire("probe") is Outcome.DUPLICATE

        clock.advance(10)
        assert a.fire("probe") is Outcome.FIRED
        assert ticks_of(queued(redis_client), "sched_probe") == [
            "2026-01-01T12:00:00Z",
            "2026-01-01T12:00:10Z",
        ]
        a.step()
        state = read_state(redis_client)
        assert state["leader"] == "a" and state["schedulers"] == ["a", "b"]
        assert state["clock_skewed"] == {}
        assert state["jobs"]["probe"]["next_fire"] == (T0 + timedelta(seconds=20)).isoformat()
    finally:
        a.step_down()
        b.step_down()


def test_a_leader_whose_lock_expired_cannot_fire(redis_client: Any, broker: Any) -> None:
    clock = FakeClock(T0 + timedelta(seconds=1))
    a, b = runner(redis_client, broker, clock, "a"), runner(redis_client, broker, clock, "b")
    try:
        a.step()
        redis_client.delete(SCHEDULER_LOCK)  # a paused past its TTL...
        b.step()  # ...and b took over
        assert b.is_leader
        clock.advance(10)
        # a still believes it leads until it tries: Redis refuses the claim.
        assert a.fire("probe") is Outcome.LOST_LEADERSHIP
        assert not a.is_leader
        assert b.fire("probe") is Outcome.FIRED
        assert ticks_of(queued(redis_client), "sched_probe") == [
            "2026-01-01T12:00:00Z",
            "2026-01-01T12:00:10Z",
        ]
    finally:
        a.step_down()
        b.step_down()


def test_takeover_fires_the_missed_tick_once_and_stale_ticks_never(
    redis_client: Any, broker: Any
) -> None:
    clock = FakeClock(T0 + timedelta(seconds=1))
    a, b = runner(redis_client, broker, clock, "a"), runner(redis_client, broker, clock, "b")
    try:
        a.step()  # fires T0
        redis_client.delete(SCHEDULER_LOCK)  # a died; its lock expired
        clock.advance(12)  # the tick at T0+10 passed with nobody leading
        b.step()  # takeover: the sweep fires T0+10 late, once
        b.step()
        assert ticks_of(queued(redis_client), "sched_probe") == [
            "2026-01-01T12:00:00Z",
            "2026-01-01T12:00:10Z",
        ]
        b.step_down()
        clock.advance(60)  # everybody down for a minute: missed ticks past grace are dropped
        c = runner(redis_client, broker, clock, "c")
        clock.advance(0.5)
        c.step()
        assert ticks_of(queued(redis_client), "sched_probe")[-1] == "2026-01-01T12:01:10Z"
        assert len(queued(redis_client)) == 3
        c.step_down()
    finally:
        a.step_down()
        b.step_down()


def test_a_broker_failure_gives_the_tick_back(redis_client: Any, dead_redis_url: str) -> None:
    from worker.broker import create_broker

    clock = FakeClock(T0 + timedelta(seconds=1))
    dead = runner(redis_client, create_broker(dead_redis_url), clock, "a")
    try:
        dead.step()  # leads; its sweep's enqueue fails
        assert dead.is_leader
        assert dead.fire("probe") is Outcome.FAILED  # still due: retried, fails again
        # The failed tick was rolled back: no dedupe key is left for any tick.
        assert list(redis_client.scan_iter("sched:probe:*")) == []
    finally:
        dead.step_down()


# --- clock jumps -----------------------------------------------------------------------------

EVERY_SECOND = CronTrigger(second="*", timezone=UTC)
DAY = timedelta(days=1)


class OffsetClock:
    """The host's real clock plus an offset: a scheduler whose clock jumps, while Redis's
    TIME (the reference) stays real."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def guarded_runner(redis_client: Any, broker: Any, clock: Any, name: str,
                   trigger: CronTrigger = EVERY_SECOND) -> ScheduleRunner:
    """A runner with the default skew guard (MAX_CLOCK_SKEW_S)."""
    job = ScheduledJob("probe", "sched_probe", trigger, ("x",), grace_s=5)
    return ScheduleRunner(redis_client, broker, [job], identity=name, clock=clock)


def alerts(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry.get("alert") == "scheduler_clock_skew"]


def redis_now(redis_client: Any) -> datetime:
    seconds, micros = redis_client.time()
    return datetime.fromtimestamp(seconds + micros / 1_000_000, UTC)


def assert_nothing_ahead(redis_client: Any) -> None:
    """No message and no dedupe key for a tick later than Redis's clock (+1 s of cron)."""
    horizon = tick_id(redis_now(redis_client) + timedelta(seconds=1))
    assert all(t <= horizon for t in ticks_of(queued(redis_client), "sched_probe"))
    keys = [key.decode() for key in redis_client.scan_iter("sched:probe:*")]
    assert all(key.removeprefix("sched:probe:") <= horizon for key in keys), keys


def test_a_leader_clock_jump_forward_then_back_neither_fires_ahead_nor_silences_ticks(
    redis_client: Any, broker: Any
) -> None:
    clock_a, clock_b = OffsetClock(), OffsetClock()
    a = guarded_runner(redis_client, broker, clock_a, "a")
    b = guarded_runner(redis_client, broker, clock_b, "b")
    try:
        a.step()  # leads; the sweep fires the current second's tick
        assert a.is_leader
        assert len(ticks_of(queued(redis_client), "sched_probe")) == 1

        # The leader's clock jumps a day ahead; its cron thread fires "tomorrow's" tick.
        clock_a.offset = DAY
        with structlog.testing.capture_logs() as logs:
            assert a.fire("probe") is Outcome.CLOCK_SKEW
        assert not a.is_leader and redis_client.get(SCHEDULER_LOCK) is None
        [alert] = alerts(logs)
        assert alert["skew_s"] == pytest.approx(DAY.total_seconds(), abs=5)
        assert len(ticks_of(queued(redis_client), "sched_probe")) == 1
        assert_nothing_ahead(redis_client)

        # Its election rounds keep it a standby while the clock is off; status shows why.
        a.step()
        assert not a.is_leader and redis_client.get(SCHEDULER_LOCK) is None
        state = read_state(redis_client)
        assert state["schedulers"] == ["a"] and state["leader"] is None
        assert state["clock_skewed"]["a"] == pytest.approx(DAY.total_seconds(), abs=5)

        # A scheduler with a correct clock takes over and fires the real ticks: nothing
        # the skewed one attempted is in its way.
        b.step()
        assert b.is_leader
        wait_until(lambda: b.fire("probe") is Outcome.FIRED, 5, "b fires a real tick")
        assert_nothing_ahead(redis_client)

        # The clock comes back; b hands over (a graceful stop) and a leads again.
        clock_a.offset = timedelta(0)
        b.step_down()
        with structlog.testing.capture_logs() as logs:
            a.step()
        assert a.is_leader
        assert any("agrees with Redis TIME again" in entry["event"] for entry in logs)
        assert read_state(redis_client)["clock_skewed"] == {}
        # The next real ticks fire: neither Redis nor a's memory holds tomorrow's tick.
        before = len(queued(redis_client))
        for _ in range(2):
            wait_until(lambda: a.fire("probe") is Outcome.FIRED, 5, "a fires a real tick")

        messages = queued(redis_client)
        assert len(messages) == before + 2
        ticks = ticks_of(messages, "sched_probe")
        assert len(set(ticks)) == len(ticks) >= 4  # each tick once (sweeps may add some)
        assert {m["options"]["scheduler"] for m in messages} == {"a", "b"}
        assert_nothing_ahead(redis_client)
    finally:
        a.step_down()
        b.step_down()


@pytest.mark.parametrize("offset", [DAY, -DAY, timedelta(seconds=8)],
                         ids=["day-ahead", "day-behind", "8s-ahead"])
def test_a_leader_whose_clock_disagrees_with_redis_steps_down_and_alerts(
    redis_client: Any, broker: Any, offset: timedelta
) -> None:
    clock_a, clock_b = OffsetClock(), OffsetClock()
    a = guarded_runner(redis_client, broker, clock_a, "a")
    b = guarded_runner(redis_client, broker, clock_b, "b")
    try:
        a.step()
        assert a.is_leader
        clock_a.offset = offset
        with structlog.testing.capture_logs() as logs:
            a.step()
        assert not a.is_leader and redis_client.get(SCHEDULER_LOCK) is None
        [alert] = alerts(logs)
        assert alert["was_leader"] is True and alert["max_skew_s"] == MAX_CLOCK_SKEW_S
        assert alert["skew_s"] == pytest.approx(offset.total_seconds(), abs=1)
        with structlog.testing.capture_logs() as logs:
            a.step()  # still off: no re-alert within a minute, still no leadership
        assert alerts(logs) == [] and not a.is_leader
        b.step()
        assert b.is_leader
        assert_nothing_ahead(redis_client)
    finally:
        a.step_down()
        b.step_down()


def test_a_small_skew_is_tolerated(redis_client: Any, broker: Any) -> None:
    clock = OffsetClock()
    clock.offset = timedelta(seconds=-3)
    a = guarded_runner(redis_client, broker, clock, "a", EVERY_10S)
    try:
        a.step()
        assert a.is_leader and not a.clock_skewed
    finally:
        a.step_down()


def test_a_tick_more_than_one_period_ahead_of_redis_is_refused(
    redis_client: Any, broker: Any
) -> None:
    # 3 s ahead is within the skew guard, but three periods of a per-second cron.
    clock = OffsetClock()
    clock.offset = timedelta(seconds=3)
    a = guarded_runner(redis_client, broker, clock, "a")
    try:
        with structlog.testing.capture_logs() as logs:
            a.step()  # leads; its sweep's tick is refused
        assert a.is_leader
        refused = [e for e in logs if e["event"].startswith("tick refused")]
        assert refused and refused[0]["ahead_s"] > 1 and refused[0]["period_s"] == 1
        assert a.sweep() == {"probe": Outcome.FUTURE_TICK}
        assert queued(redis_client) == []
        assert list(redis_client.scan_iter("sched:probe:*")) == []

        clock.offset = timedelta(0)
        assert a.sweep() == {"probe": Outcome.FIRED}
        assert len(queued(redis_client)) == 1
    finally:
        a.step_down()


def test_without_the_skew_guard_a_day_ahead_tick_is_still_refused(
    redis_client: Any, broker: Any
) -> None:
    """The reproduction of issue 16 item 4: a tick at now + 1 day used to become the job's
    high-water mark and silence it for the day, on this leader and on the next."""
    clock = FakeClock(redis_now(redis_client) + DAY)
    a = runner(redis_client, broker, clock, "a")  # skew guard off
    b = runner(redis_client, broker, clock, "b")
    try:
        a.step()
        assert a.is_leader and a.sweep() == {"probe": Outcome.FUTURE_TICK}
        assert queued(redis_client) == []
        clock.now = redis_now(redis_client)  # the clock comes back
        assert a.sweep() == {"probe": Outcome.FIRED}
        a.step_down()
        clock.advance(10)  # the next tick, under a new leader
        b.step()
        assert b.is_leader
        assert len(ticks_of(queued(redis_client), "sched_probe")) == 2
    finally:
        a.step_down()
        b.step_down()


def test_an_older_tick_never_fires_after_a_newer_one(redis_client: Any, broker: Any) -> None:
    """Coalescing across leaders rests on tick identity: a tick whose following tick was
    fired (by a leader whose clock ran slightly ahead) is superseded."""
    ahead, behind = FakeClock(T0 + timedelta(seconds=11)), FakeClock(T0 + timedelta(seconds=9.5))
    a, b = runner(redis_client, broker, ahead, "a"), runner(redis_client, broker, behind, "b")
    try:
        a.step()  # fires T0+10 (T0 is out of grace)
        a.step_down()
        b.step()  # T0 is due and within grace for b, but T0+10 already fired
        assert b.is_leader
        assert b.fire("probe") is Outcome.NOTHING_DUE  # remembered from the DUPLICATE
        assert ticks_of(queued(redis_client), "sched_probe") == ["2026-01-01T12:00:10Z"]
    finally:
        a.step_down()
        b.step_down()


def test_the_cron_threads_realign_after_the_clock_came_back(
    redis_client: Any, broker: Any
) -> None:
    """APScheduler keeps next run times as wall-clock instants; one computed while the clock
    was a day ahead is pulled back to the trigger's real next tick."""
    job = ScheduledJob("probe", "sched_probe", EVERY_10S, ("x",), grace_s=10)
    process = build(redis_client, broker, [job], standby_interval_s=0.1, identity="a")
    thread = threading.Thread(target=process.run, daemon=True)
    thread.start()
    try:
        wait_until(process.next_run_times, 10, "the cron threads started")
        # The state a clock that jumped a day ahead and came back leaves APScheduler in.
        stale = datetime.now(UTC) + DAY
        process._aps.modify_job("probe", next_run_time=stale)
        realigned = wait_until(
            lambda: (t := process.next_run_times()["probe"]) and t < stale and t, 10,
            "the cron thread realigned")
        assert realigned <= datetime.now(UTC) + timedelta(seconds=10)
    finally:
        process.stop()
        thread.join(10)
    assert not thread.is_alive()


# --- three real scheduler processes --------------------------------------------------------

SCRIPT = """
from datetime import UTC
from apscheduler.triggers.cron import CronTrigger
from keysync.logging import configure_logging
from keysync.resources import make_redis
from keysync.settings import get_settings
from worker.broker import make_broker
from worker.schedule import ScheduledJob
from worker.scheduler import main

configure_logging("console", "INFO")
jobs = [
    ScheduledJob("every2", "probe_every2", CronTrigger(second="*/2", timezone=UTC), (), 2),
    ScheduledJob("every3", "probe_every3", CronTrigger(second="*/3", timezone=UTC), (), 3),
]
main(make_redis(get_settings().redis_url), make_broker(get_settings()), jobs, leader_ttl_ms=1000,
     standby_interval_s=0.15)
"""

ROOT = Path(__file__).resolve().parents[2]


def _tick(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _assert_each_tick_once(ticks: list[str], period_s: int) -> None:
    counts = Counter(ticks)
    assert all(n == 1 for n in counts.values()), f"double-enqueued: {counts}"
    times = [_tick(t) for t in sorted(counts)]
    gaps = {(later - earlier).total_seconds() for earlier, later in pairwise(times)}
    assert gaps == {period_s}, f"missing ticks: {sorted(counts)}"


def test_three_processes_fire_each_tick_once_across_a_leader_kill(redis_client: Any) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for _ in range(3)
    ]
    by_pid = {p.pid: p for p in procs}

    def leader() -> int | None:
        raw = redis_client.get(STATE_KEY)
        return int(json.loads(raw)["leader"].rsplit(":", 1)[1]) if raw else None

    def ticks_after(actor: str, tick: str) -> int:
        return sum(t > tick for t in ticks_of(queued(redis_client), actor))

    try:
        # Three interpreters importing at once on a busy 2-core machine take up to ~20 s
        # to start; the failover bound asserted below is measured from the kill.
        leader_pid = wait_until(leader, 60, "a scheduler became leader")
        wait_until(lambda: ticks_after("probe_every2", "") >= 2
                   and ticks_after("probe_every3", "") >= 1, 10,
                   "a few ticks under the first leader")

        # Kill the leader 0.25 s before an even second: its lock outlives that tick, so the
        # tick can only be fired by the new leader's takeover sweep.
        now = time.time()
        next_even = (int(now) // 2 + 1) * 2
        if next_even - now < 0.5:
            next_even += 2
        time.sleep(next_even - now - 0.25)
        killed_at = time.time()
        by_pid[leader_pid].send_signal(signal.SIGKILL)
        by_pid[leader_pid].wait()

        new_leader = wait_until(lambda: (pid := leader()) != leader_pid and pid, 15,
                                "takeover by another scheduler")
        takeover_s = time.time() - killed_at
        missed = datetime.fromtimestamp(next_even, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        wait_until(lambda: ticks_after("probe_every2", missed) >= 2
                   and ticks_after("probe_every3", missed) >= 1, 10,
                   "more ticks under the new leader")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    survivors = [p for p in procs if p.pid != leader_pid]
    assert all(p.returncode == 0 for p in survivors), [
        p.stderr.read().decode()[-2000:] for p in survivors if p.stderr
    ]
    assert takeover_s < 15

    messages = queued(redis_client)
    _assert_each_tick_once(ticks_of(messages, "probe_every2"), 2)
    _assert_each_tick_once(ticks_of(messages, "probe_every3"), 3)

    # The tick due 0.25 s after the kill was fired exactly once, late, by the new leader.
    fired = [
        m
        for m in messages
        if m["options"]["scheduled_tick"] == missed and m["actor_name"] == "probe_every2"
    ]
    assert len(fired) == 1
    assert fired[0]["options"]["scheduler"].endswith(f":{new_leader}")
    ticks = ticks_of(messages, "probe_every2")
    assert ticks[0] < missed < ticks[-1]
    assert not redis_client.exists(SCHEDULER_LOCK)  # the survivors released it on SIGTERM
