"""order_status.apply: forward-only moves, terminal states final, refund exactly once."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from db.models import OrderStatus
from keysync.resources import Resources
from services.orders import status as order_status
from tests.order_flows import assert_invariants, order_row, place_order, refunds
from tests.order_helpers import balance, deliver_all, make_game


def _order(resources: Resources, qty: int = 1, price: str = "10.00"
           ) -> tuple[uuid.UUID, uuid.UUID]:
    game_id = make_game(resources.sessions, price=price)
    return place_order(resources, [(game_id, qty)], funds="100.00")


def _apply(
    resources: Resources, order_id: uuid.UUID, target: OrderStatus
) -> order_status.Transition:
    with resources.sessions() as s, s.begin():
        result = order_status.apply(s, order_id, target, source="test")
    assert result is not None
    return result


def test_failed_twice_refunds_once(resources: Resources) -> None:
    order_id, user_id = _order(resources)
    assert balance(resources.sessions, user_id) == Decimal("90.00")
    first = _apply(resources, order_id, OrderStatus.FAILED)
    second = _apply(resources, order_id, OrderStatus.FAILED)
    assert (first.changed, first.refunded) == (True, True)
    assert (second.changed, second.refunded) == (False, False)
    assert balance(resources.sessions, user_id) == Decimal("100.00")
    assert refunds(resources, order_id) == 1
    assert_invariants(resources)


def test_concurrent_failed_and_cancelled_refund_once(resources: Resources) -> None:
    order_id, user_id = _order(resources)
    _apply(resources, order_id, OrderStatus.PROCESSING)
    barrier = threading.Barrier(10)

    def hit(i: int) -> bool:
        barrier.wait()
        target = OrderStatus.FAILED if i % 2 else OrderStatus.CANCELLED
        return _apply(resources, order_id, target).refunded

    with ThreadPoolExecutor(10) as pool:
        refunded = list(pool.map(hit, range(10)))
    assert refunded.count(True) == 1
    assert balance(resources.sessions, user_id) == Decimal("100.00")
    assert refunds(resources, order_id) == 1
    assert_invariants(resources)


def test_completed_then_processing_stays_completed(resources: Resources) -> None:
    order_id, _ = _order(resources, qty=2)
    _apply(resources, order_id, OrderStatus.PROCESSING)
    deliver_all(resources, order_id)
    assert _apply(resources, order_id, OrderStatus.COMPLETED).changed
    late = _apply(resources, order_id, OrderStatus.PROCESSING)
    also_late = _apply(resources, order_id, OrderStatus.FAILED)
    assert not late.changed and not also_late.changed
    assert order_row(resources, order_id).status is OrderStatus.COMPLETED
    assert refunds(resources, order_id) == 0
    assert_invariants(resources)


def test_completion_needs_every_key(resources: Resources) -> None:
    order_id, _ = _order(resources)
    _apply(resources, order_id, OrderStatus.PROCESSING)
    result = _apply(resources, order_id, OrderStatus.COMPLETED)
    assert (result.changed, result.needs_fulfilment) == (False, True)
    assert result.status is OrderStatus.PROCESSING


def test_pending_cannot_jump_to_completed_but_can_fail(resources: Resources) -> None:
    order_id, user_id = _order(resources)
    assert not _apply(resources, order_id, OrderStatus.COMPLETED).changed
    cancelled = _apply(resources, order_id, OrderStatus.CANCELLED)
    assert cancelled.changed and cancelled.refunded
    assert cancelled.previous is OrderStatus.PENDING
    assert balance(resources.sessions, user_id) == Decimal("100.00")


def test_unknown_order_is_none(resources: Resources) -> None:
    with resources.sessions() as s, s.begin():
        assert order_status.apply(s, uuid.uuid4(), OrderStatus.FAILED, source="test") is None


def test_parse_status_is_case_insensitive() -> None:
    assert order_status.parse_status(" completed ") is OrderStatus.COMPLETED
    try:
        order_status.parse_status("shipped")
    except ValueError:
        pass
    else:
        raise AssertionError("unknown status accepted")
