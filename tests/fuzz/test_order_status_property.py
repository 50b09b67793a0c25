"""Property tests of the order status state machine (`services.orders.status.apply`, the one
place a status changes) against a model of the contract's rules, on real Postgres."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from db.models import Order, OrderStatus, Transaction, TransactionType
from services.ops import invariants
from services.orders import service as orders
from services.orders import status as order_status
from tests.order_helpers import balance, deliver_all, make_game, make_user

STATUSES = st.sampled_from(list(OrderStatus))
FORWARD = {
    OrderStatus.PENDING: {OrderStatus.PROCESSING, OrderStatus.FAILED, OrderStatus.CANCELLED},
    OrderStatus.PROCESSING: {OrderStatus.COMPLETED, OrderStatus.FAILED, OrderStatus.CANCELLED},
}
PROPERTY = settings(max_examples=100, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def model(start: OrderStatus, events: list[OrderStatus], keyed: bool) -> OrderStatus:
    """The contract: forward only, terminal is final, COMPLETED needs every key stored."""
    status = start
    for target in events:
        if target in FORWARD.get(status, set()) and (target is not OrderStatus.COMPLETED
                                                     or keyed):
            status = target
    return status


def _order(resources: Any, keyed: bool) -> tuple[uuid.UUID, uuid.UUID]:
    game = make_game(resources.sessions, price="15.00")
    user_id = make_user(resources.sessions, "40.00")
    view = orders.create_order(resources.sessions, resources.broker, resources.cache, user_id,
                               [orders.LineRequest(game, 2)])
    order_id = view.id
    if keyed:
        deliver_all(resources, order_id)
    return order_id, user_id


def _outcome(resources: Any, order_id: uuid.UUID) -> tuple[OrderStatus, int]:
    with resources.sessions() as s:
        order = s.get(Order, order_id)
        assert order is not None
        refunds = s.scalar(select(func.count()).select_from(Transaction).where(
            Transaction.order_id == order_id, Transaction.type == TransactionType.REFUND))
        return order.status, int(refunds or 0)


def _assert_ledger(resources: Any, user_id: uuid.UUID, refunded: bool) -> None:
    expected = Decimal("40.00") - Decimal("30.00") + (Decimal("30.00") if refunded else 0)
    assert balance(resources.sessions, user_id) == expected
    with resources.sessions() as s:
        report = invariants.check(s)
    assert report.ok, report.as_dict()


@PROPERTY
@given(events=st.lists(STATUSES, max_size=8), keyed=st.booleans())
def test_any_sequence_ends_where_the_rules_say_refunding_at_most_once(
    resources: Any, events: list[OrderStatus], keyed: bool,
) -> None:
    order_id, user_id = _order(resources, keyed)
    for target in events:
        with resources.sessions() as s, s.begin():
            transition = order_status.apply(s, order_id, target, source="property")
        assert transition is not None
    status, refunds = _outcome(resources, order_id)
    assert status is model(OrderStatus.PENDING, events, keyed)
    assert refunds == (status in order_status.REFUNDING)
    _assert_ledger(resources, user_id, refunds == 1)


@settings(max_examples=15, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(STATUSES, min_size=2, max_size=6), keyed=st.booleans())
def test_the_same_events_at_once_end_in_a_state_some_order_would_reach(
    resources: Any, events: list[OrderStatus], keyed: bool,
) -> None:
    """Concurrent deliveries in any order: the result is what one of the orders of
    arrival gives, and the refund still happens at most once."""
    from itertools import permutations

    order_id, user_id = _order(resources, keyed)
    barrier = threading.Barrier(len(events))

    def deliver(target: OrderStatus) -> None:
        barrier.wait()
        with resources.sessions() as s, s.begin():
            order_status.apply(s, order_id, target, source="property")

    threads = [threading.Thread(target=deliver, args=(e,)) for e in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    status, refunds = _outcome(resources, order_id)
    reachable = {model(OrderStatus.PENDING, list(p), keyed) for p in permutations(events)}
    assert status in reachable
    assert refunds == (status in order_status.REFUNDING)
    _assert_ledger(resources, user_id, refunds == 1)
