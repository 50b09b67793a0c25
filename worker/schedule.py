"""What the scheduler fires and when: declarations beside the actors, cron triggers, tick math.

Each actor module of `jobs` declares its own periodic runs as a `SCHEDULE` of `Every`
entries next to the actors they fire; `jobs.schedule(settings)` collects them into the
`ScheduledJob`s the leader-elected scheduler (`worker.election`, `worker.scheduler`) runs.

Triggers are cron expressions in UTC, so a tick's identity is the same on every host,
unlike interval triggers whose phase depends on when each process started. Five fields are
a crontab; a sixth, leading field is seconds (for the sub-minute jobs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.triggers.cron import CronTrigger

from keysync.settings import Settings
from worker.enqueue import Actor, Arg

# One microsecond: ticks strictly after a given instant.
_EPSILON = timedelta(microseconds=1)


def cron_trigger(expression: str) -> CronTrigger:
    """A UTC trigger from a crontab (5 fields) or `second minute hour day month weekday`."""
    fields = expression.split()
    if len(fields) == 5:
        return CronTrigger.from_crontab(expression, timezone=UTC)
    if len(fields) == 6:
        second, minute, hour, day, month, day_of_week = fields
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                           day_of_week=day_of_week, timezone=UTC)
    raise ValueError(f"cron expression needs 5 or 6 fields, got {expression!r}")


@dataclass(frozen=True)
class Every:
    """A periodic run of `actor(*args)`, declared in the actor's own module.

    `cron` is an expression or, for a schedule operators configure, a function of the
    settings (`lambda s: s.sync_cron`). A due tick older than `grace_s` is not fired late
    (e.g. after every scheduler was down).
    """

    actor: Actor
    cron: str | Callable[[Settings], str]
    grace_s: float
    args: tuple[Arg, ...] = ()

    def resolve(self, settings: Settings) -> ScheduledJob:
        expression = self.cron(settings) if callable(self.cron) else self.cron
        return ScheduledJob(self.actor.value, self.actor, cron_trigger(expression), self.args,
                            self.grace_s)


@dataclass(frozen=True)
class ScheduledJob:
    """One schedule entry: enqueue `actor(*args)` on every tick of `trigger`."""

    name: str
    actor: str
    trigger: CronTrigger
    args: tuple[Arg, ...] = ()
    # A due tick older than this is not fired late (e.g. after all schedulers were down).
    grace_s: float = 60.0
    queue: str = "default"

    @property
    def dedupe_ttl_s(self) -> int:
        # The per-tick key must outlive the window in which the tick could still be fired.
        return int(max(self.grace_s * 2, 3600))


def collect(settings: Settings, declarations: Iterable[Every]) -> list[ScheduledJob]:
    """The declared schedule with the operator's crons filled in; one entry per actor."""
    jobs = [declaration.resolve(settings) for declaration in declarations]
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"an actor is scheduled twice: {sorted(names)}")
    return jobs


def next_tick(trigger: CronTrigger, after: datetime) -> datetime | None:
    """The first tick strictly after `after`."""
    result: datetime | None = trigger.get_next_fire_time(None, after + _EPSILON)
    return result


def latest_due_tick(trigger: CronTrigger, now: datetime, after: datetime) -> datetime | None:
    """The most recent tick `t` with `after < t <= now`, or None.

    Walks forward from `after`; callers bound the window (grace period), so this is at
    most a few thousand steps even for a per-second cron.
    """
    latest: datetime | None = None
    candidate = next_tick(trigger, after)
    while candidate is not None and candidate <= now:
        latest = candidate
        candidate = next_tick(trigger, candidate)
    return latest


def tick_id(tick: datetime) -> str:
    return tick.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
