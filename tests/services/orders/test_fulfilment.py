"""Fulfilment against the G2A simulator: one paid G2A order per key, whatever fails."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from db.models import G2APurchase, G2APurchaseStatus, Order, OrderItem, OrderStatus
from g2a_sim.app import expected_authorization
from g2a_sim.server import SimServer
from services.ops import invariants
from services.orders import service as orders
from services.orders import status as order_status
from services.orders.fulfilment import Fulfiller, FulfilmentResult, Outcome
from services.orders.polling import poll_order_status
from tests.helpers import wait_until
from tests.order_helpers import (
    balance,
    make_user,
    sim_client,
    sim_game,
    sim_server,
    sim_stats,
)


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with sim_server() as server:
        yield server


def _fulfiller(resources: Any, sim: SimServer) -> Fulfiller:
    return Fulfiller(
        sessions=resources.sessions, g2a=sim_client(sim), cache=resources.cache,
        broker=resources.broker,
        key_encryption_key=resources.settings.key_encryption_key.get_secret_value(),
    )


def _order(resources: Any, lines: list[tuple[uuid.UUID, int]], funds: str = "500.00"
           ) -> tuple[uuid.UUID, uuid.UUID]:
    user_id = make_user(resources.sessions, funds)
    view = orders.create_order(
        resources.sessions, resources.broker, resources.cache, user_id,
        [orders.LineRequest(g, q) for g, q in lines],
    )
    return uuid.UUID(view["id"]), user_id


def _units(resources: Any, order_id: uuid.UUID) -> list[G2APurchase]:
    with resources.sessions() as s:
        return list(s.scalars(
            select(G2APurchase).join(OrderItem, OrderItem.id == G2APurchase.order_item_id)
            .where(OrderItem.order_id == order_id).order_by(G2APurchase.id)))


def _status(resources: Any, order_id: uuid.UUID) -> OrderStatus:
    with resources.sessions() as s:
        order = s.get(Order, order_id)
        assert order is not None
        return order.status


def _assert_invariants(resources: Any, sim: SimServer) -> None:
    with resources.sessions() as s:
        report = invariants.check(s, paid_g2a_orders=sim_stats(sim)["orders_paid"])
    assert report.ok, report.as_dict()


def _run_until_settled(f: Fulfiller, order_id: uuid.UUID, runs: int = 30) -> FulfilmentResult:
    result = f.run(order_id)
    for _ in range(runs):
        if result.outcome is not Outcome.PENDING:
            break
        result = f.run(order_id)
    return result


def test_happy_path_one_paid_order_per_key(resources: Any, sim: SimServer) -> None:
    a, b = sim_game(resources.sessions, sim), sim_game(resources.sessions, sim, skip=1)
    order_id, _ = _order(resources, [(a, 2), (b, 1)])
    result = _fulfiller(resources, sim).run(order_id)
    assert result.outcome is Outcome.COMPLETED
    assert _status(resources, order_id) is OrderStatus.COMPLETED
    units = _units(resources, order_id)
    assert [u.status for u in units] == [G2APurchaseStatus.DELIVERED] * 3
    assert len({u.g2a_order_id for u in units}) == 3
    stats = sim_stats(sim)
    assert (stats["orders_created"], stats["orders_paid"], stats["keys_issued"]) == (3, 3, 3)
    # the stored keys are the simulator's keys, encrypted at rest
    fernet = Fernet(resources.settings.key_encryption_key.get_secret_value().encode())
    stored = sorted(fernet.decrypt(u.key_encrypted).decode() for u in units)  # type: ignore[arg-type]
    assert stored == sorted(sim.state.orders[u.g2a_order_id].key for u in units)  # type: ignore[index]
    assert all(k.encode() not in u.key_encrypted for u, k in zip(units, stored, strict=True))  # type: ignore[operator]
    kek = resources.settings.key_encryption_key.get_secret_value()
    with resources.sessions() as s:
        view = orders.get_order(s, resources.cache, _owner(resources, order_id), order_id,
                                key_encryption_key=kek)
    assert sorted(view["keys"]) == stored
    # a second delivery of the job does nothing
    assert _fulfiller(resources, sim).run(order_id).outcome is Outcome.SKIPPED
    assert sim_stats(sim)["orders_created"] == 3
    _assert_invariants(resources, sim)


def _owner(resources: Any, order_id: uuid.UUID) -> uuid.UUID:
    with resources.sessions() as s:
        order = s.get(Order, order_id)
        assert order is not None
        return order.user_id


def test_injected_faults_still_one_payment_per_key(resources: Any, sim: SimServer) -> None:
    game = sim_game(resources.sessions, sim)
    order_id, _ = _order(resources, [(game, 4)])
    # Half of all G2A calls fail with 500 or garbage; the client retries what is safe and
    # fulfilment resumes from stored state for the rest.
    httpx.post(sim.url + "/_sim/faults", json={"rate": 0.5, "status": 500, "count": 12})
    result = _run_until_settled(_fulfiller(resources, sim), order_id)
    assert result.outcome is Outcome.COMPLETED, result
    stats = sim_stats(sim)
    assert stats["faults_injected"] > 0
    assert stats["orders_paid"] == 4 and stats["keys_issued"] == 4
    _assert_invariants(resources, sim)


def test_out_of_stock_fails_and_refunds_once(resources: Any, sim: SimServer) -> None:
    game = sim_game(resources.sessions, sim, in_stock=False)
    order_id, user_id = _order(resources, [(game, 1)])
    before = balance(resources.sessions, user_id)
    f = _fulfiller(resources, sim)
    assert f.run(order_id).outcome is Outcome.FAILED
    assert f.run(order_id).outcome is Outcome.SKIPPED  # a retry buys nothing
    assert _status(resources, order_id) is OrderStatus.FAILED
    assert balance(resources.sessions, user_id) == Decimal("500.00") > before
    assert [u.status for u in _units(resources, order_id)] == [G2APurchaseStatus.FAILED]
    assert sim_stats(sim)["orders_paid"] == 0
    _assert_invariants(resources, sim)


def test_insufficient_g2a_funds_fails_and_refunds(resources: Any, sim: SimServer) -> None:
    game = sim_game(resources.sessions, sim)
    order_id, user_id = _order(resources, [(game, 1)])
    httpx.post(sim.url + "/_sim/config", json={"funds": "0"})
    assert _fulfiller(resources, sim).run(order_id).outcome is Outcome.FAILED
    assert balance(resources.sessions, user_id) == Decimal("500.00")
    _assert_invariants(resources, sim)


def test_price_above_what_the_customer_paid_fails(resources: Any, sim: SimServer) -> None:
    game = sim_game(resources.sessions, sim, markup="0.5")  # G2A now costs twice our price
    order_id, user_id = _order(resources, [(game, 1)])
    assert _fulfiller(resources, sim).run(order_id).outcome is Outcome.FAILED
    assert balance(resources.sessions, user_id) == Decimal("500.00")
    assert sim_stats(sim)["orders_created"] == 0
    _assert_invariants(resources, sim)


def test_second_unit_failing_refunds_the_whole_order_once(resources: Any, sim: SimServer
                                                          ) -> None:
    good = sim_game(resources.sessions, sim)
    gone = sim_game(resources.sessions, sim, in_stock=False)
    order_id, user_id = _order(resources, [(good, 1), (gone, 1)])
    assert _fulfiller(resources, sim).run(order_id).outcome is Outcome.FAILED
    assert [u.status for u in _units(resources, order_id)] == [
        G2APurchaseStatus.DELIVERED, G2APurchaseStatus.FAILED]
    assert balance(resources.sessions, user_id) == Decimal("500.00")
    _assert_invariants(resources, sim)


def test_key_not_ready_waits_then_completes(resources: Any, sim: SimServer) -> None:
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 30})
    game = sim_game(resources.sessions, sim)
    order_id, _ = _order(resources, [(game, 1)])
    f = _fulfiller(resources, sim)
    assert f.run(order_id).outcome is Outcome.PENDING
    assert [u.status for u in _units(resources, order_id)] == [G2APurchaseStatus.PAID]
    assert _status(resources, order_id) is OrderStatus.PROCESSING
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 0})
    assert f.run(order_id).outcome is Outcome.COMPLETED
    assert sim_stats(sim)["payments"] == 1
    _assert_invariants(resources, sim)


def test_key_downloaded_elsewhere_is_key_lost_and_refunded(resources: Any, sim: SimServer
                                                           ) -> None:
    """The crash between G2A handing out the key and our commit: G2A answers ORD04 to the
    retry. That is an alert and a refund, not a retry loop."""
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 30})
    game = sim_game(resources.sessions, sim)
    order_id, user_id = _order(resources, [(game, 1)])
    f = _fulfiller(resources, sim)
    assert f.run(order_id).outcome is Outcome.PENDING
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 0})
    (unit,) = _units(resources, order_id)
    auth = {"Authorization": expected_authorization(sim.config)}
    assert httpx.get(f"{sim.url}/v1/order/key/{unit.g2a_order_id}", headers=auth).status_code == 200
    assert f.run(order_id).outcome is Outcome.FAILED
    assert [u.status for u in _units(resources, order_id)] == [G2APurchaseStatus.KEY_LOST]
    assert f.run(order_id).outcome is Outcome.SKIPPED
    assert balance(resources.sessions, user_id) == Decimal("500.00")
    _assert_invariants(resources, sim)


def test_refunded_order_is_never_bought(resources: Any, sim: SimServer) -> None:
    game = sim_game(resources.sessions, sim)
    order_id, _ = _order(resources, [(game, 1)])
    with resources.sessions() as s, s.begin():
        order_status.apply(s, order_id, OrderStatus.CANCELLED, source="test")
    assert _fulfiller(resources, sim).run(order_id).outcome is Outcome.SKIPPED
    assert sim_stats(sim)["orders_created"] == 0


def test_unknown_order_is_skipped(resources: Any, sim: SimServer) -> None:
    assert _fulfiller(resources, sim).run(uuid.uuid4()).outcome is Outcome.SKIPPED


# --- a real worker process killed mid-fulfilment -----------------------------------------


def _start_worker(sim: SimServer) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "G2A_API_URL": sim.url,
        "G2A_EMAIL": sim.config.email,
        "G2A_API_HASH": sim.config.api_hash,
        "G2A_API_SECRET": sim.config.api_secret,
    }
    keysync = os.path.join(os.path.dirname(sys.executable), "keysync")
    return subprocess.Popen(
        [keysync, "worker", "--processes", "1", "--threads", "2"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "fault", "killed_at"),
    [
        # killed while `PUT /v1/order/pay` is in flight: G2A completes the payment, we never
        # recorded it (row still CREATED)
        ("after_create", {"latency_ms": 3000, "paths": "/v1/order/pay", "count": 1},
         G2APurchaseStatus.CREATED),
        # killed after the payment was committed, while the key request is in flight
        ("after_pay", {"latency_ms": 3000, "status": 503, "paths": "/v1/order/key", "count": 1},
         G2APurchaseStatus.PAID),
    ],
)
def test_worker_killed_mid_fulfilment_completes_with_one_payment_per_key(
    resources: Any, sim: SimServer, stage: str, fault: dict[str, Any],
    killed_at: G2APurchaseStatus,
) -> None:
    httpx.post(sim.url + "/_sim/faults", json={"rate": 1.0, **fault})
    game = sim_game(resources.sessions, sim)
    first = _start_worker(sim)
    try:
        order_id, _ = _order(resources, [(game, 2)])  # dispatches fulfil_order
        wait_until(lambda: any(u.status is killed_at for u in _units(resources, order_id)),
                 timeout_s=20)
        time.sleep(0.3)  # the slow G2A call is now in flight
    finally:
        _kill(first)
    assert _status(resources, order_id) is OrderStatus.PROCESSING
    time.sleep(3)  # let the simulator finish the request the dead worker started
    httpx.delete(sim.url + "/_sim/faults")
    stuck = [u for u in _units(resources, order_id) if u.status is killed_at]
    assert len(stuck) == 1
    if stage == "after_create":
        # the worst case: G2A took the money, we never recorded it
        assert sim.state.orders[stuck[0].g2a_order_id].transaction_id is not None  # type: ignore[index]

    second = _start_worker(sim)
    try:
        # The killed message is not redelivered until dramatiq's heartbeat timeout; the
        # scheduled poller is what notices the stalled order and resumes it.
        resumed = poll_order_status(resources.sessions, sim_client(sim), resources.broker,
                                    min_age_s=0)
        assert order_id in resumed.resumed
        wait_until(lambda: _status(resources, order_id) is OrderStatus.COMPLETED, timeout_s=30)
    finally:
        _kill(second)
    units = _units(resources, order_id)
    assert [u.status for u in units] == [G2APurchaseStatus.DELIVERED] * 2
    stats = sim_stats(sim)
    assert stats["orders_paid"] == 2 and stats["payments"] == 2 and stats["keys_issued"] == 2
    assert {u.g2a_order_id for u in units} <= set(sim.state.orders)
    _assert_invariants(resources, sim)


@pytest.mark.slow
def test_worker_requeues_itself_until_the_key_is_ready(resources: Any, sim: SimServer) -> None:
    """No poller here: the actor re-sends itself with a delay while G2A says ORD03."""
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 2})
    game = sim_game(resources.sessions, sim)
    worker = _start_worker(sim)
    try:
        order_id, _ = _order(resources, [(game, 1)])
        wait_until(lambda: _status(resources, order_id) is OrderStatus.COMPLETED, timeout_s=30)
    finally:
        _kill(worker)
    stats = sim_stats(sim)
    assert stats["payments"] == 1 and stats["keys_issued"] == 1
    assert stats["key_requests_rejected"] >= 1  # it did wait for the key
    _assert_invariants(resources, sim)
