"""`catalog_sync` / `stock_check` actors on the real Redis broker and a real dramatiq Worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis as redis_lib
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import SyncRun
from g2a_sim import SimServer
from services.locks import SYNC_LOCK
from tests.helpers import wait_until


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(products=120, seed=9, rate_limit_per_min=0) as server:
        yield server


def _runs(session: Session) -> list[tuple[str, str, int]]:
    session.expire_all()
    return [(r.kind, r.status, r.added) for r in
            session.scalars(select(SyncRun).order_by(SyncRun.started_at))]


def test_actors_run_sync_and_stock_check(g2a_worker: dramatiq.Worker, broker: Any,
                                         session: Session) -> None:
    from jobs.catalog import catalog_sync, stock_check

    catalog_sync.send(True)
    broker.join(catalog_sync.queue_name, timeout=30_000)
    g2a_worker.join()
    stock_check.send()
    broker.join(stock_check.queue_name, timeout=30_000)
    g2a_worker.join()
    assert _runs(session) == [("full", "succeeded", 120), ("stock", "succeeded", 0)]


def test_lock_held_is_skipped_not_retried(g2a_worker: dramatiq.Worker, broker: Any,
                                          session: Session,
                                          redis_client: redis_lib.Redis) -> None:
    from jobs.catalog import catalog_sync

    redis_client.set(SYNC_LOCK, "someone-else", px=30_000)
    catalog_sync.send(False)
    broker.join(catalog_sync.queue_name, timeout=30_000)
    g2a_worker.join()
    assert _runs(session) == []
    # Processed once and acknowledged: nothing waits for a retry, nothing was dead-lettered.
    assert not redis_client.hlen("dramatiq:default.msgs")
    assert not redis_client.exists("dramatiq:default.DQ.msgs")


def test_full_sync_waits_for_the_lock_instead_of_being_dropped(
    g2a_worker: dramatiq.Worker, broker: Any, session: Session, redis_client: redis_lib.Redis
) -> None:
    from jobs.catalog import catalog_sync

    redis_client.set(SYNC_LOCK, "stock-check-holder", px=30_000)
    catalog_sync.send(True)
    # Deferred: it lands in the delay queue for its next attempt instead of being acked.
    # (Retries enqueues the retry just before the attempt is acked, so wait for both.)
    wait_until(lambda: (redis_client.hlen("dramatiq:default.DQ.msgs"),
                        redis_client.hlen("dramatiq:default.msgs")) == (1, 0), 20,
               "full sync deferred to the delay queue and its attempt acked")
    assert _runs(session) == []
