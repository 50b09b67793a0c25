"""The G2A status poller: stalled orders are resumed through fulfilment, nothing else."""

from __future__ import annotations

import uuid
from decimal import Decimal

import httpx
from sqlalchemy import select

from db.models import G2APurchase, G2APurchaseStatus, OrderStatus
from g2a_sim.server import SimServer
from keysync.resources import Resources
from services.orders import status as order_status
from services.orders.fulfilment import Fulfiller, FulfilmentOutcome
from services.orders.polling import poll_order_status
from services.webhooks.service import enqueue_orphans
from tests.helpers import wait_until
from tests.order_flows import assert_invariants, fulfiller, order_row, place_order
from tests.order_helpers import balance, sim_client, sim_game, sim_stats


def _order(resources: Resources, sim: SimServer) -> uuid.UUID:
    order_id, _ = place_order(resources, [(sim_game(resources.sessions, sim), 1)])
    return order_id


def _poll(resources: Resources, sim: SimServer) -> list[uuid.UUID]:
    return poll_order_status(resources.sessions, sim_client(sim), resources.broker,
                             min_age_s=0).resumed


def test_pending_order_without_a_running_job_is_resumed(
    resources: Resources, sim: SimServer
) -> None:
    order_id = _order(resources, sim)
    assert _poll(resources, sim) == [order_id]


def test_paid_unit_is_resumed_only_once_the_key_is_ready(resources: Resources, sim: SimServer
                                                         ) -> None:
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 30})
    order_id = _order(resources, sim)
    assert fulfiller(resources, sim).run(order_id).outcome is FulfilmentOutcome.PENDING
    assert _poll(resources, sim) == []  # G2A says "pending": nothing to do yet
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 0})
    assert _poll(resources, sim) == [order_id]  # "complete": fetch the key
    assert fulfiller(resources, sim).run(order_id).outcome is FulfilmentOutcome.COMPLETED
    assert _poll(resources, sim) == []  # COMPLETED orders are not polled
    assert sim_stats(sim)["payments"] == 1


def test_unpaid_unit_is_resumed_and_paid_once(resources: Resources, sim: SimServer) -> None:
    order_id = _order(resources, sim)
    # A run that stopped right after recording the G2A order (pay failed with 500s).
    httpx.post(sim.url + "/_sim/faults",
               json={"rate": 1.0, "status": 500, "paths": "/v1/order/pay"})
    assert fulfiller(resources, sim).run(order_id).outcome is FulfilmentOutcome.PENDING
    httpx.delete(sim.url + "/_sim/faults")
    with resources.sessions() as s:
        assert s.scalars(select(G2APurchase.status)).one() is G2APurchaseStatus.CREATED
    assert _poll(resources, sim) == [order_id]
    assert fulfiller(resources, sim).run(order_id).outcome is FulfilmentOutcome.COMPLETED
    assert order_row(resources, order_id).status is OrderStatus.COMPLETED
    assert sim_stats(sim)["orders_paid"] == 1


def test_recent_orders_are_left_alone(resources: Resources, sim: SimServer) -> None:
    _order(resources, sim)
    assert poll_order_status(resources.sessions, sim_client(sim), resources.broker,
                             min_age_s=60).resumed == []


def test_payment_that_timed_out_before_a_refund_is_recorded(resources: Resources, sim: SimServer
                                                            ) -> None:
    """pay times out on our side but G2A charged; then the order is failed and refunded.
    The poller records the payment (PAID) and resumes fulfilment, which fetches the paid
    key and keeps it for support: our books match G2A's and no paid key is abandoned."""
    order_id = _order(resources, sim)
    user_id = order_row(resources, order_id).user_id
    impatient = sim_client(sim, timeout_s=0.3)
    httpx.post(sim.url + "/_sim/faults",
               json={"rate": 1.0, "latency_ms": 600, "paths": "/v1/order/pay", "count": 3})
    slow = Fulfiller(resources.sessions, impatient, resources.cache, resources.broker,
                     resources.settings.key_encryption_key.get_secret_value(),
                     g2a_order_stored=enqueue_orphans)
    assert slow.run(order_id).outcome is FulfilmentOutcome.PENDING
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
    assert fulfiller(resources, sim).run(order_id).kept_keys == 1
    with resources.sessions() as s:
        unit = s.scalars(select(G2APurchase)).one()
        assert unit.status is G2APurchaseStatus.DELIVERED and unit.key_encrypted is not None
    assert order_row(resources, order_id).status is OrderStatus.FAILED
    assert balance(resources.sessions, user_id) == Decimal("500.00")
    assert sim_stats(sim)["keys_issued"] == 1
    report = assert_invariants(resources, sim, webhook_grace=False)
    assert report.g2a_paid["kept_for_support"] == 1 and report.paid_keys_not_fetched == []
    # nothing further: the order stays refunded, and the row is not polled again
    again = poll_order_status(resources.sessions, sim_client(sim), resources.broker,
                              min_age_s=0)
    assert again.paid_after_refund == [] and again.resumed == []
