"""Two syncs asked for at once, three `keysync scheduler` processes firing their own, and
two `keysync worker` processes running them: one sync at a time, every tick once, and the
catalog ends up exactly G2A's."""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.models import SyncRun
from g2a_sim.server import SimServer
from services import job_outbox
from services.locks import SYNC_LOCK
from tests.faults.support import (
    KEYSYNC,
    Figures,
    Proc,
    catalog_differences,
    check_invariants,
    g2a_env,
    processes,
    queued_messages,
    sim_faults,
    sim_stats,
    start_worker,
    sync_runs,
    wait_until,
)
from worker.election import MEMBERS_KEY, STATE_KEY

pytestmark = pytest.mark.slow


def test_two_syncs_three_schedulers_two_workers(
    resources: Any, broker: Any, redis_client: Any, tmp_path: Path, figures: Figures,
) -> None:
    with SimServer(products=600, seed=13, rate_limit_per_min=0) as sim, processes() as procs:
        sim_faults(sim, rate=1.0, latency_ms=25, paths="/v1/products")  # syncs overlap
        # Every minute, so the leader's catch-up fires a sync and a stock check at once.
        env = {**g2a_env(sim), "SYNC_CRON": "* * * * *", "STOCK_CHECK_CRON": "* * * * *",
               "SYNC_LOCK_RETRY_MS": "300",  # deferred full syncs retry quickly here
               "LOG_LEVEL": "INFO"}  # the job outcome lines counted below
        for i in range(3):
            procs.append(Proc([KEYSYNC, "scheduler"], env, tmp_path / f"scheduler-{i}.log"))

        def fired() -> bool:
            actors = {m["actor_name"] for m in queued_messages(redis_client)}
            members = redis_client.hlen(MEMBERS_KEY)
            return {"catalog_sync", "stock_check"} <= actors and members == 3

        wait_until(fired, 30, "three schedulers up and the leader's ticks fired")
        for _ in range(2):  # and two operators ask for a sync at the same moment
            job_outbox.send(broker, "catalog_sync", True)
        figures.requests += 2

        scheduled = [m for m in queued_messages(redis_client)
                     if "scheduled_tick" in m["options"]]
        ticks = Counter((m["actor_name"], m["options"]["scheduled_tick"]) for m in scheduled)
        assert ticks and set(ticks.values()) == {1}, ticks  # each tick enqueued once
        leader = json.loads(redis_client.get(STATE_KEY))["leader"]
        assert {m["options"]["scheduler"] for m in scheduled} == {leader}
        figures.notes["scheduled_ticks"] = len(ticks)

        for i in range(2):
            procs.append(start_worker(tmp_path, redis_client, env, name=f"worker-{i}"))

        def done() -> bool:
            waiting = {m["actor_name"] for m in queued_messages(redis_client)}
            with resources.sessions() as s:
                statuses = set(s.scalars(select(SyncRun.status)))
            deferred = redis_client.hlen("dramatiq:default.DQ.msgs")
            return (not waiting & {"catalog_sync", "stock_check"} and not deferred
                    and "running" not in statuses and "succeeded" in statuses
                    and not redis_client.exists(SYNC_LOCK))

        wait_until(done, 90, "every sync message handled", interval_s=0.2)

        # Which kind won the race is chance: a losing stock check is skipped, a losing full
        # sync waits and runs later. An operator asks again until a full sync has run.
        def full_sync_ran() -> bool:
            with resources.sessions() as s:
                kinds = set(s.scalars(select(SyncRun.kind).where(
                    SyncRun.status == "succeeded")))
            if "full" in {getattr(k, "value", k) for k in kinds}:
                return True
            if not redis_client.exists(SYNC_LOCK):
                job_outbox.send(broker, "catalog_sync", True)
                figures.requests += 1
            return False

        wait_until(full_sync_ran, 60, "a full sync", interval_s=0.5)
        wait_until(done, 60, "every sync message handled", interval_s=0.2)
        differences = catalog_differences(resources.sessions, sim)
        figures.requests += sim_stats(sim)["requests"]
        figures.faults += sim_stats(sim)["faults_injected"]
    for proc in procs:
        assert proc.popen.returncode == 0, proc.output()
    logs = "".join(p.log_path.read_text(errors="replace") for p in procs)
    ran, skipped = logs.count("sync.job_done"), logs.count("sync.skipped_lock_held")
    deferred = logs.count("job deferred")
    figures.notes["syncs_skipped_lock_held"] = skipped
    figures.notes["full_syncs_deferred"] = deferred
    sync_ticks = sum(1 for actor, _ in ticks if actor in ("catalog_sync", "stock_check"))
    assert ran + skipped >= 2 + sync_ticks  # every sync message was handled, none lost
    assert skipped + deferred >= 1  # the two at once cannot both have run

    runs = sync_runs(resources.sessions)
    figures.notes["sync_runs"] = len(runs)
    figures.notes["kinds"] = dict(Counter(getattr(r.kind, "value", r.kind) for r in runs))
    # One at a time (the rest found the lock taken and were skipped), fences increasing.
    assert all(r.status == "succeeded" and r.finished_at for r in runs), runs
    assert len(runs) == ran
    for earlier, later in pairwise(runs):
        assert earlier.finished_at <= later.started_at
        assert earlier.fence_token < later.fence_token
    assert differences == []
    report = check_invariants(figures, resources.sessions, cache_redis=redis_client)
    assert report.ok, report.as_dict()
