"""Three real scheduler processes (second-level cron, short lock TTL) against one Redis: the
leader is killed with SIGKILL and the broker's queue is checked tick by tick.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from services.locks import SCHEDULER_LOCK
from tests.helpers import wait_until
from tests.worker.scheduler_helpers import queued, ticks_of
from worker.election import STATE_KEY

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
