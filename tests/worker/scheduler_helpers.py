"""What the scheduler tests share: a fake clock, a runner on it, the broker's queue read back."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.triggers.cron import CronTrigger

from worker.election import ScheduleRunner
from worker.schedule import ScheduledJob

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
