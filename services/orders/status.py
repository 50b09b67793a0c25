"""The one place an order's status changes: webhooks, fulfilment and the poller all call
`apply` inside their own transaction.

Rules (CONTRACT §5):
- status only moves forward: PENDING -> PROCESSING -> COMPLETED | FAILED | CANCELLED, and
  PENDING -> FAILED | CANCELLED; terminal states are final; anything else is recorded in the
  log and ignored, so late or out-of-order events are harmless;
- COMPLETED means "every key is stored or refunded": a COMPLETED request for an order whose
  keys are not all DELIVERED is refused here (`needs_fulfilment`), and the caller resumes
  fulfilment, which completes the order itself once the last key is in;
- except when fulfilment settles an order G2A stopped selling to us mid-way
  (`settle_undelivered=True`, CONTRACT §5's residual race): the delivered keys stay
  delivered, the order becomes COMPLETED and the undelivered units' amount
  (the sum of unit_price * (quantity - delivered)) is refunded; with no key delivered at all it is a
  failure instead (FAILED, full refund);
- FAILED / CANCELLED refund the order total exactly once: the REFUND row is inserted with
  `ON CONFLICT DO NOTHING` against the partial unique index (one REFUND per order), and the
  balance is credited only when that insert happened. The order row lock serialises callers;
  the index is the backstop if a caller ever forgets the lock. A partially delivered order's
  refund is the same one row, so an order is refunded at most once whatever happens.

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


def allows(previous: OrderStatus, target: OrderStatus) -> bool:
    """Whether `previous -> target` is a forward move (what `apply` accepts)."""
    return target != previous and target in _ALLOWED.get(previous, frozenset())


def lock_order(session: Session, order_id: uuid.UUID) -> Order | None:
    """Row-lock the order for the rest of the caller's transaction (None if it is unknown)."""
    return session.execute(
        select(Order).where(Order.id == order_id).with_for_update().execution_options(
            populate_existing=True
        )
    ).scalar_one_or_none()


@dataclass(frozen=True, slots=True)
class Delivery:
    """How far an order's keys are: units ordered, units with a stored key, and what the
    units without one cost the customer."""

    units: int
    delivered: int
    undelivered_amount: Decimal

    @property
    def undelivered(self) -> int:
        return self.units - self.delivered


def delivery(session: Session, order_id: uuid.UUID) -> Delivery:
    """The order's `Delivery`, in the caller's transaction."""
    delivered = (
        select(func.count())
        .select_from(G2APurchase)
        .where(
            G2APurchase.order_item_id == OrderItem.id,
            G2APurchase.status == G2APurchaseStatus.DELIVERED,
            G2APurchase.key_encrypted.is_not(None),
        )
        .scalar_subquery()
    )
    units, keys, missing = session.execute(
        select(
            func.coalesce(func.sum(OrderItem.quantity), 0),
            func.coalesce(func.sum(delivered), 0),
            func.coalesce(func.sum((OrderItem.quantity - delivered) * OrderItem.unit_price), 0),
        ).where(OrderItem.order_id == order_id)
    ).one()
    return Delivery(int(units), int(keys), Decimal(missing))


def undelivered_units(session: Session, order_id: uuid.UUID) -> int:
    """Units of the order without a DELIVERED key."""
    return delivery(session, order_id).undelivered


def apply(
    session: Session,
    order_id: uuid.UUID,
    target: OrderStatus,
    *,
    source: str,
    order: Order | None = None,
    settle_undelivered: bool = False,
) -> Transition | None:
    """Move `order_id` to `target` if that is a forward move; None if the order is unknown.

    Runs inside the caller's transaction and row-locks the order (pass `order` when the
    caller already holds the lock). Nothing is invalidated here: the caller does that after
    its commit with `Transition.cache_keys`.

    `settle_undelivered` (fulfilment only, with target COMPLETED, once G2A refused a unit
    and nothing more will be bought): complete with the keys delivered so far and refund
    the rest; FAILED with a full refund when no key was delivered.
    """
    if order is None:
        order = lock_order(session, order_id)
        if order is None:
            return None
    bound = log.bind(order_id=str(order.id), source=source)
    previous = order.status
    if not allows(previous, target):
        bound.info("order status change ignored", current=previous.value, requested=target.value)
        return Transition(order.id, order.user_id, previous, previous, changed=False)
    refund = Decimal(order.total) if target in REFUNDING else Decimal(0)
    if target is OrderStatus.COMPLETED:
        done = delivery(session, order.id)
        if done.undelivered > 0:
            if not settle_undelivered:
                bound.info("order completion deferred: keys missing", current=previous.value)
                return Transition(
                    order.id, order.user_id, previous, previous, changed=False,
                    needs_fulfilment=True,
                )
            if done.delivered == 0:
                target, refund = OrderStatus.FAILED, Decimal(order.total)
            else:
                refund = done.undelivered_amount
                bound.warning(
                    "order partially delivered; undelivered units refunded",
                    delivered=done.delivered, undelivered=done.undelivered, refund=str(refund),
                )

    order.status = target
    order.updated_at = func.now()
    refunded = False
    if refund > 0:
        refunded = _refund_once(session, order, refund)
    session.flush()
    # Counted before commit: a rolled-back caller over-counts, which the ledger never does.
    ORDER_TRANSITIONS.labels(target.value).inc()
    if refunded:
        REFUNDS.inc()
    bound.info(
        "order status changed", previous=previous.value, status=target.value, refunded=refunded
    )
    return Transition(order.id, order.user_id, previous, target, changed=True, refunded=refunded)


def _refund_once(session: Session, order: Order, amount: Decimal) -> bool:
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
