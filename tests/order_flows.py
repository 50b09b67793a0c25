"""Orders through the real services: place one, fulfil it against the simulator, read it
back, check the invariants. The rows underneath come from `tests/order_helpers.py`."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
from dramatiq import Message
from sqlalchemy import func, select

from db.models import G2APurchase, Order, OrderItem, OrderStatus, Transaction, TransactionType
from g2a_sim.server import SimServer
from keysync.resources import Resources
from services.accounts import tokens
from services.ops import invariants
from services.orders import service as orders
from services.orders import status as order_status
from services.orders.fulfilment import Fulfiller
from services.webhooks.service import enqueue_orphans
from tests.helpers import stop_worker, wait_until
from tests.order_helpers import make_user, sim_client, sim_stats
from worker.enqueue import Actor


def place_order(
    resources: Resources, lines: Sequence[tuple[uuid.UUID, int]], *, funds: str = "500.00",
    status: OrderStatus | None = None,
) -> tuple[uuid.UUID, uuid.UUID]:
    """A new user with `funds` buys `lines` (game, quantity) through `create_order`, then
    the order is moved to `status` if given; returns (order_id, user_id)."""
    user_id = make_user(resources.sessions, funds)
    view = orders.create_order(
        resources.sessions, resources.broker, resources.cache, user_id,
        [orders.LineRequest(game, quantity) for game, quantity in lines],
    )
    if status is not None:
        with resources.sessions() as s, s.begin():
            order_status.apply(s, view.id, status, source="test")
    return view.id, user_id


def fulfiller(resources: Resources, sim: SimServer) -> Fulfiller:
    return Fulfiller(
        sessions=resources.sessions, g2a=sim_client(sim), cache=resources.cache,
        broker=resources.broker,
        key_encryption_key=resources.settings.key_encryption_key.get_secret_value(),
        g2a_order_stored=enqueue_orphans,
    )


def order_row(resources: Resources, order_id: uuid.UUID) -> Order:
    with resources.sessions() as s:
        order = s.get(Order, order_id)
        assert order is not None
        return order


def order_units(resources: Resources, order_id: uuid.UUID) -> list[G2APurchase]:
    """The order's G2A purchases, oldest first."""
    with resources.sessions() as s:
        return list(s.scalars(
            select(G2APurchase).join(OrderItem, OrderItem.id == G2APurchase.order_item_id)
            .where(OrderItem.order_id == order_id).order_by(G2APurchase.id)))


def refunds(resources: Resources, order_id: uuid.UUID) -> int:
    with resources.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Transaction).where(
            Transaction.order_id == order_id, Transaction.type == TransactionType.REFUND)) or 0)


def assert_invariants(
    resources: Resources, sim: SimServer | None = None, *, webhook_grace: bool = True
) -> invariants.InvariantReport:
    """`keysync check`'s invariants hold (and, with `sim`, G2A's paid count matches ours)."""
    paid = None if sim is None else sim_stats(sim)["orders_paid"]
    with resources.sessions() as s:
        report = invariants.check(s, paid_g2a_orders=paid, webhook_grace=webhook_grace)
    assert report.ok, report.as_dict()
    return report


def bearer(resources: Resources, user_id: uuid.UUID) -> dict[str, str]:
    """Authorization headers for `user_id`, as `POST /auth/login` would hand out."""
    token = tokens.issue(user_id, resources.settings.jwt_secret.get_secret_value(), 600)
    return {"Authorization": f"Bearer {token}"}


def dead_letter_fulfilment(broker: Any, order_id: uuid.UUID, *,
                           dead: Callable[[], bool]) -> None:
    """The order's fulfilment fails for real until dramatiq dead-letters it (until `dead()`):
    the worker that runs it has no G2A configuration (the suite's environment has none).
    One retry, 10 ms apart, instead of the production ten over minutes."""
    broker.client.delete("dramatiq:default", "dramatiq:default.msgs")  # what placing sent
    broker.enqueue(Message(queue_name="default", actor_name=Actor.FULFIL_ORDER.value,
                           args=(str(order_id),), kwargs={},
                           options={"max_retries": 1, "min_backoff": 10, "max_backoff": 10}))
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        wait_until(dead, 30, "fulfilment dead-lettered")
    finally:
        stop_worker(broker, worker)
