"""The one place an order's status changes: webhooks, fulfilment and the poller all call
`apply` inside their own transaction.

Rules (CONTRACT §5):
- status only moves forward: PENDING -> PROCESSING -> COMPLETED | FAILED | CANCELLED, and
  PENDING -> FAILED | CANCELLED; terminal states are final; anything else is recorded in the
  log and ignored, so late or out-of-order events are harmless;
- COMPLETED means "every key is stored": a COMPLETED request for an order whose keys are not
  all DELIVERED is refused here (`needs_fulfilment`), and the caller resumes fulfilment, which
  completes the order itself once the last key is in;
- FAILED / CANCELLED refund the order total exactly once: the REFUND row is inserted with
  `ON CONFLICT DO NOTHING` against the partial unique index (one REFUND per order), and the
  balance is credited only when that insert happened. The order row lock serialises callers;
  the index is the backstop if a caller ever forgets the lock.

The PURCHASE transaction records the debit made at order creation, which did happen, so it
stays COMPLETED; a refund is its own COMPLETED REFUND row. That keeps the ledger invariant
`balance == sum(COMPLETED TOP_UP + REFUND - PURCHASE)` true at every commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

import structlog
from prometheus_client import Counter
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from db.models import (
    G2APurchase,
    G2APurchaseStatus,
    Order,
    OrderItem,
    OrderStatus,
    TransactionStatus,
    TransactionType,
    User,
)
from services.cache import keys

log = structlog.get_logger(__name__)

ORDER_TRANSITIONS = Counter(
    "keysync_order_transitions_total",
    "Order status changes applied (ignored requests are not counted), by new status",
    ["status"],
)
REFUNDS = Counter("keysync_refunds_total", "REFUND transactions written (one per order at most)")

TERMINAL = frozenset({OrderStatus.COMPLETED, OrderStatus.FAILED, OrderStatus.CANCELLED})
REFUNDING = frozenset({OrderStatus.FAILED, OrderStatus.CANCELLED})

_ALLOWED: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.PROCESSING, *REFUNDING}),
    OrderStatus.PROCESSING: TERMINAL,
}

# The partial unique index `transactions_one_purchase_one_refund_per_order` is the arbiter.
_INSERT_REFUND = text(
    """
    INSERT INTO transactions (id, user_id, order_id, type, amount, status)
    VALUES (:id, :user_id, :order_id, :type, :amount, :status)
    ON CONFLICT (order_id, type)
        WHERE order_id IS NOT NULL AND type IN ('PURCHASE', 'REFUND')
    DO NOTHING
    RETURNING id
    """
)


@dataclass(frozen=True, slots=True)
class Transition:
    """What `apply` did to one order; callers invalidate `cache_keys` after commit."""

    order_id: uuid.UUID
    user_id: uuid.UUID
    previous: OrderStatus
    status: OrderStatus
    changed: bool
    refunded: bool = False
    # COMPLETED was asked for but keys are missing: the caller should resume fulfilment.
    needs_fulfilment: bool = False

    @property
    def cache_keys(self) -> list[str]:
        return [
            keys.order(self.order_id),
            keys.user_orders(self.user_id),
            keys.user_transactions(self.user_id),
        ]


def parse_status(value: str) -> OrderStatus:
    """A status string from outside (webhooks), case-insensitive; ValueError if unknown."""
    try:
        return OrderStatus(value.strip().upper())
    except ValueError:
        raise ValueError(f"unknown order status {value!r}") from None


def lock_order(session: Session, order_id: uuid.UUID) -> Order | None:
    """Row-lock the order for the rest of the caller's transaction (None if it is unknown)."""
    return session.execute(
        select(Order).where(Order.id == order_id).with_for_update().execution_options(
            populate_existing=True
        )
    ).scalar_one_or_none()


def undelivered_units(session: Session, order_id: uuid.UUID) -> int:
    """Units of the order without a DELIVERED key."""
    units = session.scalar(
        select(func.coalesce(func.sum(OrderItem.quantity), 0)).where(OrderItem.order_id == order_id)
    )
    delivered = session.scalar(
        select(func.count())
        .select_from(G2APurchase)
        .join(OrderItem, OrderItem.id == G2APurchase.order_item_id)
        .where(
            OrderItem.order_id == order_id,
            G2APurchase.status == G2APurchaseStatus.DELIVERED,
            G2APurchase.key_encrypted.is_not(None),
        )
    )
    return int(units or 0) - int(delivered or 0)


def apply(
    session: Session,
    order_id: uuid.UUID,
    target: OrderStatus,
    *,
    source: str,
    order: Order | None = None,
) -> Transition | None:
    """Move `order_id` to `target` if that is a forward move; None if the order is unknown.

    Runs inside the caller's transaction and row-locks the order (pass `order` when the
    caller already holds the lock). Nothing is invalidated here: the caller does that after
    its commit with `Transition.cache_keys`.
    """
    if order is None:
        order = lock_order(session, order_id)
        if order is None:
            return None
    bound = log.bind(order_id=str(order.id), source=source)
    previous = order.status
    if target == previous or target not in _ALLOWED.get(previous, frozenset()):
        bound.info("order status change ignored", current=previous.value, requested=target.value)
        return Transition(order.id, order.user_id, previous, previous, changed=False)
    if target is OrderStatus.COMPLETED and undelivered_units(session, order.id) > 0:
        bound.info("order completion deferred: keys missing", current=previous.value)
        return Transition(
            order.id, order.user_id, previous, previous, changed=False, needs_fulfilment=True
        )

    order.status = target
    order.updated_at = func.now()
    refunded = False
    if target in REFUNDING:
        refunded = _refund_once(session, order)
    session.flush()
    # Counted before commit: a rolled-back caller over-counts, which the ledger never does.
    ORDER_TRANSITIONS.labels(target.value).inc()
    if refunded:
        REFUNDS.inc()
    bound.info(
        "order status changed", previous=previous.value, status=target.value, refunded=refunded
    )
    return Transition(order.id, order.user_id, previous, target, changed=True, refunded=refunded)


def _refund_once(session: Session, order: Order) -> bool:
    amount = Decimal(order.total)
    if amount <= 0:
        return False  # nothing was debited (a free order), so nothing to give back
    inserted = session.execute(
        _INSERT_REFUND,
        {
            "id": uuid.uuid4(),
            "user_id": order.user_id,
            "order_id": order.id,
            "type": TransactionType.REFUND.value,
            "amount": amount,
            "status": TransactionStatus.COMPLETED.value,
        },
    ).scalar_one_or_none()
    if inserted is None:
        return False  # refunded before: the balance was credited then, not again now
    session.execute(
        update(User).where(User.id == order.user_id).values(balance=User.balance + amount)
    )
    return True
