"""order_status.apply: forward-only moves, terminal states final, refund exactly once."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from db.models import (
    Order,
    OrderStatus,
    Transaction,
    TransactionType,
)
from services.ops import invariants
from services.orders import service as orders
from services.orders import status as order_status
from tests.order_helpers import balance, deliver_all, make_game, make_user


def _order(resources: Any, qty: int = 1, price: str = "10.00") -> tuple[uuid.UUID, uuid.UUID]:
    user_id = make_user(resources.sessions, "100.00")
    game_id = make_game(resources.sessions, price=price)
    view = orders.create_order(
        resources.sessions, resources.broker, resources.cache, user_id,
        [orders.LineRequest(game_id, qty)],
    )
    return uuid.UUID(view["id"]), user_id


def _apply(resources: Any, order_id: uuid.UUID, target: OrderStatus) -> order_status.Transition:
    with resources.sessions() as s, s.begin():
        result = order_status.apply(s, order_id, target, source="test")
    assert result is not None
    return result


def _refunds(resources: Any, order_id: uuid.UUID) -> int:
    with resources.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Transaction).where(
            Transaction.order_id == order_id, Transaction.type == TransactionType.REFUND)) or 0)


def _assert_invariants(resources: Any) -> None:
    with resources.sessions() as s:
        report = invariants.check(s)
    assert report.ok, report.as_dict()


def test_failed_twice_refunds_once(resources: Any) -> None:
    order_id, user_id = _order(resources)
    assert balance(resources.sessions, user_id) == Decimal("90.00")
    first = _apply(resources, order_id, OrderStatus.FAILED)
    second = _apply(resources, order_id, OrderStatus.FAILED)
    assert (first.changed, first.refunded) == (True, True)
    assert (second.changed, second.refunded) == (False, False)
    assert balance(resources.sessions, user_id) == Decimal("100.00")
    assert _refunds(resources, order_id) == 1
    _assert_invariants(resources)


def test_concurrent_failed_and_cancelled_refund_once(resources: Any) -> None:
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
    assert _refunds(resources, order_id) == 1
    _assert_invariants(resources)


def test_completed_then_processing_stays_completed(resources: Any) -> None:
    order_id, _ = _order(resources, qty=2)
    _apply(resources, order_id, OrderStatus.PROCESSING)
    deliver_all(resources, order_id)
    assert _apply(resources, order_id, OrderStatus.COMPLETED).changed
    late = _apply(resources, order_id, OrderStatus.PROCESSING)
    also_late = _apply(resources, order_id, OrderStatus.FAILED)
    assert not late.changed and not also_late.changed
    with resources.sessions() as s:
        assert s.get(Order, order_id).status is OrderStatus.COMPLETED  # type: ignore[union-attr]
    assert _refunds(resources, order_id) == 0
    _assert_invariants(resources)


def test_completion_needs_every_key(resources: Any) -> None:
    order_id, _ = _order(resources)
    _apply(resources, order_id, OrderStatus.PROCESSING)
    result = _apply(resources, order_id, OrderStatus.COMPLETED)
    assert (result.changed, result.needs_fulfilment) == (False, True)
    assert result.status is OrderStatus.PROCESSING


def test_pending_cannot_jump_to_completed_but_can_fail(resources: Any) -> None:
    order_id, user_id = _order(resources)
    assert not _apply(resources, order_id, OrderStatus.COMPLETED).changed
    cancelled = _apply(resources, order_id, OrderStatus.CANCELLED)
    assert cancelled.changed and cancelled.refunded
    assert cancelled.previous is OrderStatus.PENDING
    assert balance(resources.sessions, user_id) == Decimal("100.00")


def test_unknown_order_is_none(resources: Any) -> None:
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
