"""Scheduler: exactly one enqueue per tick across several schedulers, failover, catch-up.

The in-process tests drive `ScheduleRunner` with an injected clock. Clock jumps are in
`test_scheduler_clock.py`, three real scheduler processes in `test_scheduler_processes.py`.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

import pytest
from apscheduler.triggers.cron import CronTrigger

import jobs
from services.locks import SCHEDULER_LOCK
from tests.worker.scheduler_helpers import EVERY_10S, T0, FakeClock, queued, runner, ticks_of
from worker.election import Outcome, read_state
from worker.enqueue import Actor
from worker.schedule import Every, collect, cron_trigger, latest_due_tick


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
