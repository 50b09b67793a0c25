"""A real `keysync worker` SIGKILLed mid-sync and mid-fulfilment; dramatiq redelivers.

The killed worker never acks its message. The Redis broker puts unacked messages of a
worker whose heartbeat stopped back on the queue during its queue maintenance; we run
that maintenance (`redeliver_from_dead_workers`) instead of waiting for the 60 s default
heartbeat timeout. No poller, no manual re-send: the redelivered message alone must
finish the work, exactly once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from db.models import G2APurchase, G2APurchaseStatus, Game, Order, OrderItem, OrderStatus, SyncRun
from g2a_sim.server import SimServer
from services import job_outbox
from services.locks import SYNC_LOCK
from services.orders import service as orders
from tests.faults.support import (
    Figures,
    catalog_differences,
    check_invariants,
    g2a_env,
    processes,
    redeliver_from_dead_workers,
    sim_clear,
    sim_faults,
    sim_stats,
    start_worker,
    wait_until,
)
from tests.order_helpers import make_user, sim_game

pytestmark = pytest.mark.slow


@pytest.fixture
def big_sim() -> Iterator[SimServer]:
    # More than one write batch (1,000 products), so the kill lands between committed batches.
    with SimServer(products=2_500, seed=21, rate_limit_per_min=0) as server:
        yield server


def _units(sessions: Any, order_id: uuid.UUID) -> list[G2APurchase]:
    with sessions() as s:
        return list(s.scalars(
            select(G2APurchase).join(OrderItem, OrderItem.id == G2APurchase.order_item_id)
            .where(OrderItem.order_id == order_id).order_by(G2APurchase.id)))


def _order_status(sessions: Any, order_id: uuid.UUID) -> OrderStatus:
    with sessions() as s:
        order = s.get(Order, order_id)
        assert order is not None
        return order.status


def _runs(sessions: Any) -> list[SyncRun]:
    with sessions() as s:
        return list(s.scalars(select(SyncRun).order_by(SyncRun.started_at)))


def _games(sessions: Any) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Game)) or 0)


def test_worker_killed_mid_sync_redelivered_sync_completes_once(
    resources: Any, broker: Any, big_sim: SimServer, redis_client: Any, redis_url: str,
    tmp_path: Path, figures: Figures,
) -> None:
    sim_faults(big_sim, rate=1.0, latency_ms=150, paths="/v1/products")  # a listing of seconds
    env = g2a_env(big_sim)
    with processes() as procs:
        procs.append(first := start_worker(tmp_path, redis_client, env))
        job_outbox.send(broker, "catalog_sync", True)
        figures.requests += 1
        # Killed after the first batch of 1,000 products committed, mid-listing.
        wait_until(lambda: _games(resources.sessions) >= 1_000, 60, "first batch committed")
        first.kill()
        figures.faults += 1
        committed = _games(resources.sessions)
        (dead_run,) = _runs(resources.sessions)
        assert dead_run.status == "running"
        assert redis_client.exists(SYNC_LOCK)  # the dead holder's lock outlives it

        assert redeliver_from_dead_workers(redis_url, redis_client) == 1
        # The redelivered message would be skipped (lock held) until the dead holder's
        # 60 s lock TTL ends; we end it now instead of waiting.
        redis_client.pexpire(SYNC_LOCK, 1)
        wait_until(lambda: not redis_client.exists(SYNC_LOCK), 5, "dead holder's lock expiry")
        sim_clear(big_sim)
        procs.append(start_worker(tmp_path, redis_client, env))
        wait_until(lambda: any(r.status == "succeeded" for r in _runs(resources.sessions)), 60,
                   "redelivered sync finished")

    dead, redelivered = _runs(resources.sessions)
    assert dead.status == "failed" and "abandoned" in (dead.error_detail or "")
    assert redelivered.status == "succeeded" and redelivered.fence_token > dead.fence_token
    # Exactly once: what the dead run committed is found unchanged, the rest is added.
    assert _games(resources.sessions) == 2_500
    assert (redelivered.unchanged, redelivered.added, redelivered.updated) == (
        committed, 2_500 - committed, 0)
    assert catalog_differences(resources.sessions, big_sim) == []
    stats = sim_stats(big_sim)
    figures.faults += stats["faults_injected"]
    figures.notes["g2a_requests"] = stats["requests"]
    report = check_invariants(figures, resources.sessions, sim=big_sim, cache_redis=redis_client)
    assert report.ok, report.as_dict()


def test_worker_killed_while_paying_redelivered_pays_each_key_once(
    resources: Any, sim: SimServer, redis_client: Any, redis_url: str, tmp_path: Path,
    figures: Figures,
) -> None:
    # The first payment is slow: the worker dies while G2A is taking the money, so the
    # unit is still CREATED on our side although G2A has been paid.
    sim_faults(sim, rate=1.0, latency_ms=1500, paths="/v1/order/pay", count=1)
    games = [sim_game(resources.sessions, sim), sim_game(resources.sessions, sim, skip=1)]
    env = g2a_env(sim)
    with processes() as procs:
        procs.append(first := start_worker(tmp_path, redis_client, env))
        user_id = make_user(resources.sessions, "500.00")
        view = orders.create_order(resources.sessions, resources.broker, resources.cache,
                                   user_id, [orders.LineRequest(games[0], 2),
                                             orders.LineRequest(games[1], 1)])
        order_id = view.id
        figures.requests += 1
        pay_path = "/v1/order/pay/{order_id}"
        wait_until(lambda: sim_stats(sim)["requests_by_path"].get(pay_path, 0) >= 1, 20,
                   "payment in flight")
        first.kill()
        figures.faults += 1
        wait_until(lambda: sim_stats(sim)["payments"] >= 1, 10, "G2A completes the payment")
        (stuck,) = _units(resources.sessions, order_id)
        assert stuck.status is G2APurchaseStatus.CREATED  # paid at G2A, unknown to us
        # Cached views of the order in flight: completing it must invalidate them.
        with resources.sessions() as s:
            kek = resources.settings.key_encryption_key.get_secret_value()
            assert orders.get_order(s, resources.cache, user_id, order_id,
                                    key_encryption_key=kek).status is OrderStatus.PROCESSING
            orders.list_orders(s, resources.cache, user_id, key_encryption_key=kek)

        assert redeliver_from_dead_workers(redis_url, redis_client) == 1
        procs.append(start_worker(tmp_path, redis_client, env))
        wait_until(lambda: _order_status(resources.sessions, order_id) is OrderStatus.COMPLETED,
                   30, "order completed by the redelivered message")

    units = _units(resources.sessions, order_id)
    assert [u.status for u in units] == [G2APurchaseStatus.DELIVERED] * 3
    assert units[0].g2a_order_id == stuck.g2a_order_id  # the paid order was reused, not rebought
    stats = sim_stats(sim)
    assert (stats["orders_paid"], stats["payments"], stats["keys_issued"]) == (3, 3, 3)
    figures.faults += stats["faults_injected"]
    figures.notes["g2a_requests"] = stats["requests"]
    with resources.sessions() as s:  # what the customer now sees, through the cache
        view = orders.get_order(s, resources.cache, user_id, order_id, key_encryption_key=kek)
    assert view.status is OrderStatus.COMPLETED and len(view.keys or []) == 3
    report = check_invariants(figures, resources.sessions, sim=sim, cache_redis=redis_client)
    assert report.ok, report.as_dict()
