"""The default schedule fires the full sync and the stock check at the same tick (02:00 and
14:00 are multiples of 15 minutes); both take `lock:g2a:sync`. When the stock check wins,
the full sync (the only run that removes delisted products) must wait and run, not be
dropped until the next tick 12 h later."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import dramatiq
import pytest
from sqlalchemy import select

from db.models import SyncKind, SyncRun, SyncStatus
from g2a_sim.server import SimServer
from jobs import schedule
from keysync.resources import Resources
from services import job_outbox
from services.locks import SYNC_LOCK
from tests.faults.support import sim_faults, wait_until
from worker._metrics import JOBS
from worker._resources import ResourcesMiddleware
from worker.schedule import next_tick


def test_default_crons_fire_the_full_sync_and_the_stock_check_together(settings: Any) -> None:
    jobs = {j.name: j for j in schedule(settings)}
    before = datetime(2026, 1, 1, 1, 59, 59, tzinfo=UTC)
    assert next_tick(jobs["catalog_sync"].trigger, before) == next_tick(
        jobs["stock_check"].trigger, before) == datetime(2026, 1, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def quick_retry_worker(g2a_worker: dramatiq.Worker, broker: Any) -> Iterator[dramatiq.Worker]:
    """`g2a_worker` whose full sync, on losing the lock, retries after 0.3 s instead of
    SYNC_LOCK_RETRY_MS's 30 s, so the test can wait for the run itself."""
    middleware = next(m for m in broker.middleware if isinstance(m, ResourcesMiddleware))
    g2a_resources = middleware.resources
    assert g2a_resources is not None
    middleware.resources = Resources.build(
        g2a_resources.settings.model_copy(update={"sync_lock_retry_ms": 300}), broker,
        name="test-quick-retry")
    try:
        yield g2a_worker
    finally:
        middleware.resources.close()
        middleware.resources = g2a_resources


def _runs(sessions: Any) -> list[SyncRun]:
    with sessions() as s:
        return list(s.scalars(select(SyncRun).order_by(SyncRun.started_at)))


def test_a_full_sync_that_loses_the_race_to_the_stock_check_still_runs(
    quick_retry_worker: dramatiq.Worker, broker: Any, sim: SimServer, redis_client: Any,
    sessions: Any,
) -> None:
    retried_before = JOBS.labels("catalog_sync", "retried")._value.get()
    sim_faults(sim, rate=1.0, latency_ms=100, paths="/v1/products")
    job_outbox.send(broker, "stock_check")  # the 02:00 tick: this one took the lock first
    wait_until(lambda: redis_client.exists(SYNC_LOCK), 10, "stock check running")
    job_outbox.send(broker, "catalog_sync", True)  # ... and the same tick's full sync

    def full_sync_done() -> bool:
        return any(r.kind is SyncKind.FULL and r.status is not SyncStatus.RUNNING
                   for r in _runs(sessions))

    wait_until(full_sync_done, 60, "the deferred full sync finished")
    stock, full = _runs(sessions)
    assert (stock.kind, stock.status) == (SyncKind.STOCK, SyncStatus.SUCCEEDED)
    assert (full.kind, full.status) == (SyncKind.FULL, SyncStatus.SUCCEEDED)
    # It lost the race (deferred at least once), waited for the lock rather than running
    # beside the stock check, and listed the whole catalog.
    assert JOBS.labels("catalog_sync", "retried")._value.get() > retried_before
    assert stock.finished_at is not None and full.started_at >= stock.finished_at
    assert full.added + full.updated + full.unchanged == len(sim.state.ids)
