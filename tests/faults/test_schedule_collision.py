"""The default schedule fires the full sync and the stock check at the same tick (02:00 and
14:00 are multiples of 15 minutes); both take `lock:g2a:sync`. When the stock check wins,
the full sync (the only run that removes delisted products) must wait and run, not be
dropped until the next tick 12 h later."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import dramatiq
from sqlalchemy import select

from db.models import SyncRun
from g2a_sim.server import SimServer
from services import job_outbox
from services.locks import SYNC_LOCK
from services.scheduling import default_jobs, next_tick
from tests.faults.support import sim_faults, wait_until


def test_default_crons_fire_the_full_sync_and_the_stock_check_together(settings: Any) -> None:
    jobs = {j.name: j for j in default_jobs(settings.sync_cron, settings.stock_check_cron)}
    before = datetime(2026, 1, 1, 1, 59, 59, tzinfo=UTC)
    assert next_tick(jobs["catalog_sync"].trigger, before) == next_tick(
        jobs["stock_check"].trigger, before) == datetime(2026, 1, 1, 2, 0, tzinfo=UTC)


def test_a_full_sync_that_loses_the_race_to_the_stock_check_still_runs(
    g2a_worker: dramatiq.Worker, broker: Any, sim: SimServer, redis_client: Any,
    sessions: Any,
) -> None:
    sim_faults(sim, rate=1.0, latency_ms=100, paths="/v1/products")
    job_outbox.send(broker, "stock_check")  # the 02:00 tick: this one took the lock first
    wait_until(lambda: redis_client.exists(SYNC_LOCK), 10, "stock check running")
    job_outbox.send(broker, "catalog_sync", True)  # ... and the same tick's full sync
    wait_until(lambda: not redis_client.exists(SYNC_LOCK), 30, "stock check done")

    def full_sync_ran_or_waits() -> bool:
        with sessions() as s:
            kinds = {getattr(k, "value", k) for k in s.scalars(select(SyncRun.kind))}
        # A deferred retry sits in the delay queue until its next attempt.
        waiting = redis_client.hlen("dramatiq:default.DQ.msgs")
        return "full" in kinds or waiting > 0

    # The full sync ran, or is at least waiting to run again (not acknowledged and gone).
    assert wait_until(full_sync_ran_or_waits, 30, "full sync ran or deferred")
    with sessions() as s:
        assert "stock" in {getattr(k, "value", k) for k in s.scalars(select(SyncRun.kind))}
