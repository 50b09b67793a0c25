"""The G2A status poller: stalled orders are resumed through fulfilment, nothing else."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from db.models import G2APurchase, G2APurchaseStatus, Order, OrderStatus
from g2a_sim.server import SimServer
from services.ops import invariants
from services.orders import service as orders
from services.orders import status as order_status
from services.orders.fulfilment import Fulfiller, Outcome
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


def _order(resources: Any, sim: SimServer, qty: int = 1) -> uuid.UUID:
    user_id = make_user(resources.sessions, "500.00")
    game = sim_game(resources.sessions, sim)
    view = orders.create_order(resources.sessions, resources.broker, resources.cache, user_id,
                               [orders.LineRequest(game, qty)])
    return uuid.UUID(view["id"])


def _user_of(resources: Any, order_id: uuid.UUID) -> uuid.UUID:
    with resources.sessions() as s:
        order = s.get(Order, order_id)
        assert order is not None
        return order.user_id


def _fulfiller(resources: Any, sim: SimServer) -> Fulfiller:
    return Fulfiller(resources.sessions, sim_client(sim), resources.cache, resources.broker,
                     resources.settings.key_encryption_key.get_secret_value())


def _poll(resources: Any, sim: SimServer) -> list[uuid.UUID]:
    return poll_order_status(resources.sessions, sim_client(sim), resources.broker,
                             min_age_s=0).resumed


def test_pending_order_without_a_running_job_is_resumed(resources: Any, sim: SimServer) -> None:
    order_id = _order(resources, sim)
    assert _poll(resources, sim) == [order_id]


def test_paid_unit_is_resumed_only_once_the_key_is_ready(resources: Any, sim: SimServer
                                                         ) -> None:
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 30})
    order_id = _order(resources, sim)
    assert _fulfiller(resources, sim).run(order_id).outcome is Outcome.PENDING
    assert _poll(resources, sim) == []  # G2A says "pending": nothing to do yet
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 0})
    assert _poll(resources, sim) == [order_id]  # "complete": fetch the key
    assert _fulfiller(resources, sim).run(order_id).outcome is Outcome.COMPLETED
    assert _poll(resources, sim) == []  # COMPLETED orders are not polled
    assert sim_stats(sim)["payments"] == 1


def test_unpaid_unit_is_resumed_and_paid_once(resources: Any, sim: SimServer) -> None:
    order_id = _order(resources, sim)
    # A run that stopped right after recording the G2A order (pay failed with 500s).
    httpx.post(sim.url + "/_sim/faults",
               json={"rate": 1.0, "status": 500, "paths": "/v1/order/pay"})
    assert _fulfiller(resources, sim).run(order_id).outcome is Outcome.PENDING
    httpx.delete(sim.url + "/_sim/faults")
    with resources.sessions() as s:
        assert s.scalars(select(G2APurchase.status)).one() is G2APurchaseStatus.CREATED
    assert _poll(resources, sim) == [order_id]
    assert _fulfiller(resources, sim).run(order_id).outcome is Outcome.COMPLETED
    with resources.sessions() as s:
        assert s.get(Order, order_id).status is OrderStatus.COMPLETED  # type: ignore[union-attr]
    assert sim_stats(sim)["orders_paid"] == 1


def test_recent_orders_are_left_alone(resources: Any, sim: SimServer) -> None:
    _order(resources, sim)
    assert poll_order_status(resources.sessions, sim_client(sim), resources.broker,
                             min_age_s=60).resumed == []


def test_payment_that_timed_out_before_a_refund_is_recorded(resources: Any, sim: SimServer
                                                            ) -> None:
    """pay times out on our side but G2A charged; then the order is failed and refunded.
    The poller records the payment (PAID) and resumes fulfilment, which fetches the paid
    key and keeps it for support: our books match G2A's and no paid key is abandoned."""
    order_id = _order(resources, sim)
    user_id = _user_of(resources, order_id)
    impatient = sim_client(sim, timeout_s=0.3)
    httpx.post(sim.url + "/_sim/faults",
               json={"rate": 1.0, "latency_ms": 600, "paths": "/v1/order/pay", "count": 3})
    slow = Fulfiller(resources.sessions, impatient, resources.cache, resources.broker,
                     resources.settings.key_encryption_key.get_secret_value())
    assert slow.run(order_id).outcome is Outcome.PENDING
    # the simulator finishes the payments we stopped waiting for
    wait_until(lambda: sim_stats(sim)["orders_paid"] == 1, what="G2A took the payment")
    with resources.sessions() as s, s.begin():
        order_status.apply(s, order_id, OrderStatus.FAILED, source="test")
    result = poll_order_status(resources.sessions, sim_client(sim), resources.broker,
                               min_age_s=0)
    assert len(result.paid_after_refund) == 1 and result.resumed == [order_id]
    with resources.sessions() as s:
        assert s.scalars(select(G2APurchase.status)).one() is G2APurchaseStatus.PAID
    # the queued fulfilment fetches the key and keeps it; the order stays refunded
    assert _fulfiller(resources, sim).run(order_id).kept_keys == 1
    with resources.sessions() as s:
        unit = s.scalars(select(G2APurchase)).one()
        assert unit.status is G2APurchaseStatus.DELIVERED and unit.key_encrypted is not None
        assert s.get(Order, order_id).status is OrderStatus.FAILED  # type: ignore[union-attr]
    assert balance(resources.sessions, user_id) == Decimal("500.00")
    assert sim_stats(sim)["keys_issued"] == 1
    with resources.sessions() as s:
        report = invariants.check(s, paid_g2a_orders=sim_stats(sim)["orders_paid"],
                                  webhook_grace=False)
    assert report.ok, report.as_dict()
    assert report.g2a_paid["kept_for_support"] == 1 and report.paid_keys_not_fetched == []
    # nothing further: the order stays refunded, and the row is not polled again
    again = poll_order_status(resources.sessions, sim_client(sim), resources.broker,
                              min_age_s=0)
    assert again.paid_after_refund == [] and again.resumed == []
