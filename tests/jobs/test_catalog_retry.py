"""A scheduled full sync that fails is retried with growing delays within its window, not
12 hours later; a removal-guard stop is not retried; when the window is spent the run is
recorded and dead-lettered with a readable reason (issue 15). The real scheduler code fires
the tick, a real dramatiq Worker on the real Redis broker runs it against the simulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import dramatiq
import httpx
import pytest
import redis as redis_lib
from sqlalchemy import select
from sqlalchemy.orm import Session

import jobs
from db.models import SyncRun
from g2a_sim import SimServer
from services.catalog import LOCK_HELD_DETAIL
from services.locks import SYNC_LOCK, lock_value
from tests.helpers import wait_until
from worker.election import ScheduleRunner

MIN_MS = 300  # the first retry's delay here (60 s by default); then 600, 1200, ... ms
REPRS = ("datetime.datetime(", "ZoneInfo(", "Range(", "Traceback")


@pytest.fixture
def settings(request: pytest.FixtureRequest) -> Any:
    """The suite's settings with the retry delays shortened (what this module's worker
    runs with); a test may override more through indirect parametrisation."""
    from keysync.settings import get_settings

    return get_settings().model_copy(update={
        "sync_retry_min_ms": MIN_MS, "sync_retry_max_ms": 4 * MIN_MS,
        "sync_retry_window_s": 60, "sync_lock_retry_ms": 200,
        **getattr(request, "param", {}),
    })


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(products=60, seed=21, rate_limit_per_min=0) as server:
        yield server


def runs(session: Session) -> list[SyncRun]:
    session.expire_all()
    return list(session.scalars(select(SyncRun).order_by(SyncRun.started_at)))


def fault(sim: SimServer, **body: Any) -> None:
    httpx.post(sim.url + "/_sim/faults", json=body, timeout=5).raise_for_status()


def clear_fault(sim: SimServer) -> None:
    httpx.delete(sim.url + "/_sim/faults", timeout=5).raise_for_status()


def fire_scheduled_full_sync(redis_client: redis_lib.Redis, broker: Any, settings: Any) -> str:
    """The scheduler's own path: the leader fires the due tick of `catalog_sync` (its cron
    made every minute, so a tick is due now; the real clock, which the leader checks
    against Redis's)."""
    every_minute = settings.model_copy(update={"sync_cron": "* * * * *"})
    job = next(j for j in jobs.schedule(every_minute) if j.name == "catalog_sync")
    runner = ScheduleRunner(redis_client, broker, [job], identity="test-scheduler")
    runner.step()
    runner.step_down()
    # Queued, or (when its first attempt already failed) waiting for its retry.
    [raw] = (redis_client.hvals("dramatiq:default.msgs")
             or redis_client.hvals("dramatiq:default.DQ.msgs"))
    message = json.loads(raw)
    assert (message["actor_name"], message["args"]) == ("catalog_sync", [True])
    assert message["options"]["scheduled_tick"]
    return str(message["message_id"])


def dead_letters(redis_client: redis_lib.Redis) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in redis_client.hvals("dramatiq:default.XQ.msgs")]


def queue_empty(redis_client: redis_lib.Redis) -> bool:
    return not (redis_client.hlen("dramatiq:default.msgs")
                or redis_client.hlen("dramatiq:default.DQ.msgs"))


def test_failed_scheduled_full_sync_is_retried_with_backoff_and_succeeds(
    g2a_worker: dramatiq.Worker, broker: Any, sim: SimServer, session: Session,
    redis_client: redis_lib.Redis, settings: Any,
) -> None:
    fault(sim, status=500, only="listing")  # G2A's listing is down
    message_id = fire_scheduled_full_sync(redis_client, broker, settings)
    wait_until(lambda: len([r for r in runs(session) if r.status == "failed"]) >= 2, 60,
               "two failed attempts")
    clear_fault(sim)  # G2A is back
    wait_until(lambda: any(r.status == "succeeded" for r in runs(session)), 60,
               "a retry that succeeds")
    wait_until(lambda: queue_empty(redis_client), 10, "the message acknowledged")

    history = runs(session)
    assert [r.kind for r in history] == ["full"] * len(history)
    failed = [r for r in history if r.status == "failed"]
    assert history[-1].status == "succeeded" and history[-1].added == 60
    assert all(r.status == "failed" for r in history[:-1])
    for run in failed:
        assert run.error_detail and run.error_detail.startswith("page 1 of the whole catalog")
        assert not any(marker in run.error_detail for marker in REPRS), run.error_detail
    # Growing delays: the n-th retry starts at least MIN_MS * 2**(n-1) after the previous
    # attempt finished (1 min, 2 min, 4 min, ... by default).
    for n, (before, after) in enumerate(pairwise(history), start=1):
        assert before.finished_at is not None
        gap_ms = (after.started_at - before.finished_at).total_seconds() * 1000
        assert gap_ms >= min(MIN_MS * 2 ** (n - 1), 4 * MIN_MS) * 0.95, (n, gap_ms)
    assert dead_letters(redis_client) == []
    # One message did it all: the tick's own, retried (not a new one per attempt).
    assert len(history) >= 3 and message_id


def test_removal_guard_stop_is_not_retried(
    g2a_worker: dramatiq.Worker, broker: Any, sim: SimServer, session: Session,
    redis_client: redis_lib.Redis, settings: Any,
) -> None:
    from jobs.catalog import catalog_sync

    catalog_sync.send(True)
    broker.join(catalog_sync.queue_name, timeout=30_000)
    g2a_worker.join()
    fault(sim, empty_listing=True)  # 200 {total: 0}: every active game "missing"
    fire_scheduled_full_sync(redis_client, broker, settings)
    wait_until(lambda: len(runs(session)) == 2 and runs(session)[-1].status != "running", 30,
               "the guarded run finished")
    # Acknowledged without a retry: a Retry would have put it in the delay queue before
    # the attempt was acknowledged, so an empty queue means none is coming.
    wait_until(lambda: queue_empty(redis_client), 10, "the message acknowledged")
    guarded = runs(session)
    assert [(r.status, (r.error_detail or "").startswith("removal guard:")) for r in guarded] \
        == [("succeeded", False), ("partial", True)]
    assert dead_letters(redis_client) == []


@pytest.mark.parametrize("settings", [{"sync_retry_window_s": 2}], indirect=True)
def test_retries_stop_at_the_window_with_a_readable_dead_letter(
    g2a_worker: dramatiq.Worker, broker: Any, sim: SimServer, session: Session,
    redis_client: redis_lib.Redis, settings: Any,
) -> None:
    from jobs.catalog import catalog_sync

    # Another holder keeps the lock for the whole window: the full sync is deferred every
    # SYNC_LOCK_RETRY_MS (info, nothing recorded) until the window is spent.
    redis_client.set(SYNC_LOCK, lock_value(), px=60_000)
    message = catalog_sync.send(True)
    wait_until(lambda: dead_letters(redis_client), 30, "the message dead-lettered")
    [dead] = dead_letters(redis_client)
    assert dead["message_id"] == message.message_id
    assert dead["options"]["retries"] >= 5  # deferred every 200 ms for ~2 s
    # One row, written when it gave up, says why in words.
    [row] = runs(session)
    assert (row.kind, row.status, row.fence_token) == ("full", "failed", 0)
    assert row.error_detail and row.error_detail.startswith(LOCK_HELD_DETAIL)
    assert not any(marker in row.error_detail for marker in REPRS)
