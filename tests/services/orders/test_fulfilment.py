"""Fulfilment against the G2A simulator: one paid G2A order per key, whatever fails."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from db.models import G2APurchaseStatus, OrderStatus
from g2a_sim.app import expected_authorization
from g2a_sim.server import SimServer
from keysync.resources import Resources
from services.orders import service as orders
from services.orders import status as order_status
from services.orders.chains import RUN_LEASE_MS, FulfilmentChains
from services.orders.fulfilment import Fulfiller, FulfilmentOutcome, FulfilmentResult
from services.orders.polling import poll_order_status
from tests.helpers import wait_until
from tests.order_flows import assert_invariants, fulfiller, order_row, order_units, place_order
from tests.order_helpers import balance, sim_client, sim_game, sim_stats


def _status(resources: Resources, order_id: uuid.UUID) -> OrderStatus:
    return order_row(resources, order_id).status


def _run_until_settled(f: Fulfiller, order_id: uuid.UUID, runs: int = 30) -> FulfilmentResult:
    result = f.run(order_id)
    for _ in range(runs):
        if result.outcome is not FulfilmentOutcome.PENDING:
            break
        result = f.run(order_id)
    return result


def test_happy_path_one_paid_order_per_key(resources: Resources, sim: SimServer) -> None:
    a, b = sim_game(resources.sessions, sim), sim_game(resources.sessions, sim, skip=1)
    order_id, _ = place_order(resources, [(a, 2), (b, 1)])
    result = fulfiller(resources, sim).run(order_id)
    assert result.outcome is FulfilmentOutcome.COMPLETED
    assert _status(resources, order_id) is OrderStatus.COMPLETED
    units = order_units(resources, order_id)
    assert [u.status for u in units] == [G2APurchaseStatus.DELIVERED] * 3
    assert len({u.g2a_order_id for u in units}) == 3
    stats = sim_stats(sim)
    assert (stats["orders_created"], stats["orders_paid"], stats["keys_issued"]) == (3, 3, 3)
    assert stats["lookups"] == 2  # the pre-flight: one per item, not per unit
    # the stored keys are the simulator's keys, encrypted at rest
    fernet = Fernet(resources.settings.key_encryption_key.get_secret_value().encode())
    stored = sorted(fernet.decrypt(u.key_encrypted).decode() for u in units)  # type: ignore[arg-type]
    assert stored == sorted(sim.state.orders[u.g2a_order_id].key for u in units)  # type: ignore[index]
    assert all(k.encode() not in u.key_encrypted for u, k in zip(units, stored, strict=True))  # type: ignore[operator]
    kek = resources.settings.key_encryption_key.get_secret_value()
    with resources.sessions() as s:
        owner = order_row(resources, order_id).user_id
        view = orders.get_order(s, resources.cache, owner, order_id, key_encryption_key=kek)
    assert sorted(view.keys or []) == stored
    assert view.refunded == Decimal("0.00")
    assert [(i.quantity, i.delivered) for i in view.items] == [(2, 2), (1, 1)]
    # a second delivery of the job does nothing
    assert fulfiller(resources, sim).run(order_id).outcome is FulfilmentOutcome.SKIPPED
    assert sim_stats(sim)["orders_created"] == 3
    assert_invariants(resources, sim)


def test_injected_faults_still_one_payment_per_key(resources: Resources, sim: SimServer) -> None:
    game = sim_game(resources.sessions, sim)
    order_id, _ = place_order(resources, [(game, 4)])
    # Half of all G2A calls fail with 500 or garbage; the client retries what is safe and
    # fulfilment resumes from stored state for the rest.
    httpx.post(sim.url + "/_sim/faults", json={"rate": 0.5, "status": 500, "count": 12})
    result = _run_until_settled(fulfiller(resources, sim), order_id)
    assert result.outcome is FulfilmentOutcome.COMPLETED, result
    stats = sim_stats(sim)
    assert stats["faults_injected"] > 0
    assert stats["orders_paid"] == 4 and stats["keys_issued"] == 4
    assert_invariants(resources, sim)


def test_out_of_stock_fails_and_refunds_once(resources: Resources, sim: SimServer) -> None:
    # Our row still says in stock (the last sync); G2A has none: the pre-flight look-up
    # refuses before anything is created at G2A.
    game = sim_game(resources.sessions, sim, in_stock=False)
    order_id, user_id = place_order(resources, [(game, 1)])
    before = balance(resources.sessions, user_id)
    f = fulfiller(resources, sim)
    assert f.run(order_id).outcome is FulfilmentOutcome.FAILED
    assert f.run(order_id).outcome is FulfilmentOutcome.SKIPPED  # a retry buys nothing
    assert _status(resources, order_id) is OrderStatus.FAILED
    assert balance(resources.sessions, user_id) == Decimal("500.00") > before
    assert order_units(resources, order_id) == []
    stats = sim_stats(sim)
    assert (stats["orders_created"], stats["orders_paid"]) == (0, 0)
    assert_invariants(resources, sim)


def test_insufficient_g2a_funds_fails_and_refunds(resources: Resources, sim: SimServer) -> None:
    game = sim_game(resources.sessions, sim)
    order_id, user_id = place_order(resources, [(game, 1)])
    httpx.post(sim.url + "/_sim/config", json={"funds": "0"})
    assert fulfiller(resources, sim).run(order_id).outcome is FulfilmentOutcome.FAILED
    assert balance(resources.sessions, user_id) == Decimal("500.00")
    assert_invariants(resources, sim)


def test_price_above_what_the_customer_paid_fails(resources: Resources, sim: SimServer) -> None:
    game = sim_game(resources.sessions, sim, markup="0.5")  # G2A now costs twice our price
    order_id, user_id = place_order(resources, [(game, 1)])
    assert fulfiller(resources, sim).run(order_id).outcome is FulfilmentOutcome.FAILED
    assert balance(resources.sessions, user_id) == Decimal("500.00")
    assert sim_stats(sim)["orders_created"] == 0
    assert_invariants(resources, sim)


def test_second_item_out_of_stock_buys_nothing_and_refunds_once(
    resources: Resources, sim: SimServer
) -> None:
    """Issue 16 reproduction: the first item was bought, the second refused, the whole order
    refunded. Now the pre-flight sees the second item first and nothing is bought."""
    good = sim_game(resources.sessions, sim)
    gone = sim_game(resources.sessions, sim, in_stock=False)
    order_id, user_id = place_order(resources, [(good, 1), (gone, 1)])
    assert fulfiller(resources, sim).run(order_id).outcome is FulfilmentOutcome.FAILED
    assert order_units(resources, order_id) == []
    assert sim_stats(sim)["orders_created"] == 0
    assert balance(resources.sessions, user_id) == Decimal("500.00")
    assert_invariants(resources, sim)


def test_key_not_ready_waits_then_completes(resources: Resources, sim: SimServer) -> None:
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 30})
    game = sim_game(resources.sessions, sim)
    order_id, _ = place_order(resources, [(game, 1)])
    f = fulfiller(resources, sim)
    assert f.run(order_id).outcome is FulfilmentOutcome.PENDING
    assert [u.status for u in order_units(resources, order_id)] == [G2APurchaseStatus.PAID]
    assert _status(resources, order_id) is OrderStatus.PROCESSING
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 0})
    assert f.run(order_id).outcome is FulfilmentOutcome.COMPLETED
    assert sim_stats(sim)["payments"] == 1
    assert_invariants(resources, sim)


def test_key_downloaded_elsewhere_is_key_lost_and_refunded(resources: Resources, sim: SimServer
                                                           ) -> None:
    """The crash between G2A handing out the key and our commit: G2A answers ORD04 to the
    retry. That is an alert and a refund, not a retry loop."""
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 30})
    game = sim_game(resources.sessions, sim)
    order_id, user_id = place_order(resources, [(game, 1)])
    f = fulfiller(resources, sim)
    assert f.run(order_id).outcome is FulfilmentOutcome.PENDING
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 0})
    (unit,) = order_units(resources, order_id)
    auth = {"Authorization": expected_authorization(sim.config)}
    assert httpx.get(f"{sim.url}/v1/order/key/{unit.g2a_order_id}", headers=auth).status_code == 200
    assert f.run(order_id).outcome is FulfilmentOutcome.FAILED
    assert [u.status for u in order_units(resources, order_id)] == [G2APurchaseStatus.KEY_LOST]
    assert f.run(order_id).outcome is FulfilmentOutcome.SKIPPED
    assert balance(resources.sessions, user_id) == Decimal("500.00")
    assert_invariants(resources, sim)


def test_refunded_order_is_never_bought(resources: Resources, sim: SimServer) -> None:
    game = sim_game(resources.sessions, sim)
    order_id, _ = place_order(resources, [(game, 1)])
    with resources.sessions() as s, s.begin():
        order_status.apply(s, order_id, OrderStatus.CANCELLED, source="test")
    assert fulfiller(resources, sim).run(order_id).outcome is FulfilmentOutcome.SKIPPED
    assert sim_stats(sim)["orders_created"] == 0


def test_unknown_order_is_skipped(resources: Resources, sim: SimServer) -> None:
    assert fulfiller(resources, sim).run(uuid.uuid4()).outcome is FulfilmentOutcome.SKIPPED


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
    resources: Resources, sim: SimServer, stage: str, fault: dict[str, Any],
    killed_at: G2APurchaseStatus,
) -> None:
    httpx.post(sim.url + "/_sim/faults", json={"rate": 1.0, **fault})
    game = sim_game(resources.sessions, sim)
    first = _start_worker(sim)
    try:
        order_id, _ = place_order(resources, [(game, 2)])  # dispatches fulfil_order
        wait_until(lambda: any(u.status is killed_at for u in order_units(resources, order_id)),
                   timeout_s=20)
        # The one slow G2A call has started: the simulator counts a fault when it fires.
        wait_until(lambda: sim_stats(sim)["faults_injected"] == 1, what="slow call in flight")
    finally:
        _kill(first)
    assert _status(resources, order_id) is OrderStatus.PROCESSING
    httpx.delete(sim.url + "/_sim/faults")
    stuck = [u for u in order_units(resources, order_id) if u.status is killed_at]
    assert len(stuck) == 1
    if stage == "after_create":
        # The worst case: G2A takes the money for the pay call the dead worker started, and
        # we never record it. (after_pay: the slow key call ends in a 503 that issues no
        # key, so there is nothing to wait for.)
        g2a_order = sim.state.orders[stuck[0].g2a_order_id]  # type: ignore[index]
        wait_until(lambda: g2a_order.transaction_id is not None, what="G2A payment")

    second = _start_worker(sim)
    try:
        # The killed message is not redelivered until dramatiq's heartbeat timeout; the
        # scheduled poller is what notices the stalled order and resumes it, once the dead
        # run's chain lease has lapsed (never a second chain next to a live one).
        chains = FulfilmentChains(resources.redis)
        wait_until(lambda: not chains.alive([order_id]), timeout_s=RUN_LEASE_MS / 1000 + 5,
                   what="the killed run's chain lease lapsed")
        resumed = poll_order_status(resources.sessions, sim_client(sim), resources.broker,
                                    chains=chains, min_age_s=0)
        assert order_id in resumed.resumed
        wait_until(lambda: _status(resources, order_id) is OrderStatus.COMPLETED, timeout_s=30)
    finally:
        _kill(second)
    units = order_units(resources, order_id)
    assert [u.status for u in units] == [G2APurchaseStatus.DELIVERED] * 2
    stats = sim_stats(sim)
    assert stats["orders_paid"] == 2 and stats["payments"] == 2 and stats["keys_issued"] == 2
    assert {u.g2a_order_id for u in units} <= set(sim.state.orders)
    assert_invariants(resources, sim)


@pytest.mark.slow
def test_worker_requeues_itself_until_the_key_is_ready(
    resources: Resources, sim: SimServer
) -> None:
    """No poller here: the actor re-sends itself with a delay while G2A says ORD03."""
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 2})
    game = sim_game(resources.sessions, sim)
    worker = _start_worker(sim)
    try:
        order_id, _ = place_order(resources, [(game, 1)])
        wait_until(lambda: _status(resources, order_id) is OrderStatus.COMPLETED, timeout_s=30)
    finally:
        _kill(worker)
    stats = sim_stats(sim)
    assert stats["payments"] == 1 and stats["keys_issued"] == 1
    assert stats["key_requests_rejected"] >= 1  # it did wait for the key
    assert_invariants(resources, sim)
