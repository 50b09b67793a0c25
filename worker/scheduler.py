"""The `keysync scheduler` process: APScheduler cron threads plus the leader-election loop.

Every process runs the same BlockingScheduler, so each one is ready to fire on time the
moment it becomes leader; `ScheduleRunner.fire` turns a standby's tick into a no-op and
makes the leader's tick exactly-once (see `worker.election`). A separate thread runs
the election round every `standby_interval_s`; a new leader's first round fires the tick
missed during failover.

APScheduler keeps each job's next run time as a wall-clock instant: after the host clock
jumped ahead and came back, it would wait for the instant computed during the jump (a day
away, say). Each election round therefore pulls any next run time that lies beyond the
trigger's real next tick back to it. The leader's sweep fires due ticks meanwhile anyway
(at most `standby_interval_s` late); this keeps them punctual.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import TypedDict, Unpack

import dramatiq
import redis
import structlog
from apscheduler.events import EVENT_SCHEDULER_STARTED, SchedulerEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler

from worker.election import ScheduleRunner
from worker.schedule import ScheduledJob

log = structlog.get_logger(__name__)


class SchedulerProcess:
    def __init__(self, runner: ScheduleRunner) -> None:
        # APScheduler logs every job add and run at INFO; our own lines ("scheduler
        # starting" with the schedule, "tick fired") say the same with more context.
        logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))
        self.runner = runner
        self._stopping = threading.Event()
        self._aps = BlockingScheduler(
            timezone=UTC,
            # One thread per job: a slow Redis call for one job never delays another's tick.
            executors={"default": ThreadPoolExecutor(max(len(runner.jobs), 1))},
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        self._aps.add_listener(self._on_started, EVENT_SCHEDULER_STARTED)
        for job in runner.jobs:
            self._aps.add_job(
                runner.fire,
                trigger=job.trigger,
                args=[job.name],
                id=job.name,
                name=f"{job.name} -> {job.actor}",
                # APScheduler's own misfire handling only covers this process; missed
                # ticks across processes are the runner's sweep's job.
                misfire_grace_time=max(1, int(job.grace_s)),
            )

    def realign(self) -> list[str]:
        """Pull next run times left in the future by a clock that came back; the names of
        the jobs moved."""
        if not self._aps.running:
            return []
        # APScheduler's own clock (the host's), which is what its next run times are in.
        now = datetime.now(UTC)
        moved = []
        for job in self._aps.get_jobs():
            scheduled: datetime | None = job.next_run_time
            expected: datetime | None = job.trigger.get_next_fire_time(None, now)
            if scheduled is not None and expected is not None and scheduled > expected:
                self._aps.modify_job(job.id, next_run_time=expected)
                moved.append(job.id)
                self.runner.log.warning("cron realigned after a clock jump", job=job.id,
                                        was=scheduled.isoformat(), now_next=expected.isoformat())
        return moved

    def next_run_times(self) -> dict[str, datetime | None]:
        """When this process's cron threads will next call `fire`, per job."""
        if not self._aps.running:
            return {}
        return {job.id: job.next_run_time for job in self._aps.get_jobs()}

    def _elect_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.runner.step()
                self.realign()
            except Exception:
                # A bug in one round must not silently end elections for this process:
                # it would keep renewing nothing and never take over again.
                self.runner.log.exception("scheduler election round failed")
            self._stopping.wait(self.runner.standby_interval_s)

    def _on_started(self, _: SchedulerEvent) -> None:
        # A stop() that came before start() found nothing to shut down; honour it now,
        # or run() would block forever.
        if self._stopping.is_set():
            self._aps.shutdown(wait=False)

    def run(self) -> None:
        """Block until `stop()` (or SIGTERM/SIGINT when installed by `main`)."""
        self.runner.log.info(
            "scheduler starting",
            jobs={job.name: str(job.trigger) for job in self.runner.jobs},
        )
        elector = threading.Thread(target=self._elect_loop, name="scheduler-elect", daemon=True)
        elector.start()
        try:
            self._aps.start()  # blocks until shutdown()
        finally:
            self._stopping.set()
            elector.join(timeout=5)
            self.runner.step_down()
            self.runner.log.info("scheduler stopped")

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(SchedulerNotRunningError):
            self._aps.shutdown(wait=False)


class RunnerOptions(TypedDict, total=False):
    leader_ttl_ms: int
    standby_interval_s: float
    identity: str
    max_clock_skew_s: float | None


def build(client: redis.Redis, broker: dramatiq.Broker, jobs: Sequence[ScheduledJob],
          **options: Unpack[RunnerOptions]) -> SchedulerProcess:
    return SchedulerProcess(ScheduleRunner(client, broker, jobs, **options))


def main(client: redis.Redis, broker: dramatiq.Broker, jobs: Sequence[ScheduledJob],
         **options: Unpack[RunnerOptions]) -> None:
    """Run `jobs` (`jobs.schedule(settings)` in production) in the foreground until
    SIGTERM/SIGINT; releases leadership on the way out."""
    process = build(client, broker, jobs, **options)

    def on_signal(signum: int, _: FrameType | None) -> None:
        log.info("scheduler stopping", signal=signal.Signals(signum).name)
        # shutdown() takes APScheduler's locks: not from inside a signal handler.
        threading.Thread(target=process.stop, name="scheduler-stop").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    process.run()
