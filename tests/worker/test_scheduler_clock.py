"""Scheduler clock jumps: a leader whose clock jumps neither fires ahead nor silences ticks.

These tests use a clock offset from the real one, so Redis's `TIME` (the reference every
scheduler is judged by) stays the real time.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from apscheduler.triggers.cron import CronTrigger

from services.locks import SCHEDULER_LOCK
from tests.helpers import wait_until
from tests.worker.scheduler_helpers import EVERY_10S, T0, FakeClock, queued, runner, ticks_of
from worker.election import MAX_CLOCK_SKEW_S, Outcome, ScheduleRunner, read_state
from worker.schedule import ScheduledJob, tick_id
from worker.scheduler import build

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
