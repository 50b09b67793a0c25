"""Reading orders: the cacheable views and how they become the API's answer.

Cached views hold the stored Fernet tokens, never plaintext keys: Redis only ever sees
ciphertext, and `present` decrypts for the one response that needs them. The loaders read
inside the caller's transaction, so the invariant checker can recompute a cached entry in
its own snapshot with the very same code.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import structlog
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from db.models import (
    G2APurchase,
    G2APurchaseStatus,
    Order,
    OrderItem,
    OrderStatus,
    Transaction,
    TransactionStatus,
    TransactionType,
)
from services.orders.errors import OrderNotFound
from services.orders.schemas import CachedOrder, CachedOrderList, OrderLineView, OrderView

log = structlog.get_logger(__name__)


def _encrypted_keys(session: Session, order: Order) -> list[str]:
    rows = session.execute(
        select(G2APurchase.key_encrypted)
        .join(OrderItem, OrderItem.id == G2APurchase.order_item_id)
        .where(
            OrderItem.order_id == order.id,
            G2APurchase.status == G2APurchaseStatus.DELIVERED,
            G2APurchase.key_encrypted.is_not(None),
        )
        .order_by(OrderItem.id, G2APurchase.unit_index)
    ).scalars()
    return [token.decode() for token in rows if token is not None]


def _delivered_per_item(session: Session, order: Order) -> dict[int, int]:
    rows = session.execute(
        select(G2APurchase.order_item_id, func.count())
        .join(OrderItem, OrderItem.id == G2APurchase.order_item_id)
        .where(
            OrderItem.order_id == order.id,
            G2APurchase.status == G2APurchaseStatus.DELIVERED,
            G2APurchase.key_encrypted.is_not(None),
        )
        .group_by(G2APurchase.order_item_id)
    ).all()
    return {item_id: int(count) for item_id, count in rows}


def _refunded(session: Session, order: Order) -> Decimal:
    amount = session.scalar(
        select(func.coalesce(func.sum(Transaction.amount), 0)).where(
            Transaction.order_id == order.id,
            Transaction.type == TransactionType.REFUND,
            Transaction.status == TransactionStatus.COMPLETED,
        )
    )
    return Decimal(amount or 0).quantize(Decimal("0.01"))


def order_view(session: Session, order: Order, *, with_keys: bool = True) -> CachedOrder:
    """The cacheable view of a loaded order; its stored keys only when COMPLETED.

    `refunded` and each line's `delivered` change only with the order's status (refunds
    and completion happen in `status.apply`), so the cache entry, invalidated on every
    transition, never holds a stale count while keys are being bought."""
    completed = with_keys and order.status is OrderStatus.COMPLETED
    # A PENDING/PROCESSING order has neither: spare the queries on the hot create path.
    delivered = (
        _delivered_per_item(session, order) if order.status is OrderStatus.COMPLETED else {}
    )
    final = order.status in (OrderStatus.COMPLETED, OrderStatus.FAILED, OrderStatus.CANCELLED)
    return CachedOrder(
        id=order.id,
        user_id=order.user_id,
        status=order.status,
        total=order.total,
        refunded=_refunded(session, order) if final else Decimal("0.00"),
        items=[
            OrderLineView(
                game_id=i.game_id, quantity=i.quantity, unit_price=i.unit_price,
                delivered=delivered.get(i.id, 0),
            )
            for i in order.items
        ],
        created_at=order.created_at,
        updated_at=order.updated_at,
        keys_encrypted=_encrypted_keys(session, order) if completed else None,
    )


def present(view: CachedOrder, key_encryption_key: str) -> OrderView:
    """The API shape of a (possibly cached) view: keys decrypted, only when COMPLETED."""
    plain: list[str] | None = None
    if view.status is OrderStatus.COMPLETED:
        fernet = Fernet(key_encryption_key.encode())
        plain = []
        for token in view.keys_encrypted or []:
            try:
                plain.append(fernet.decrypt(token.encode()).decode())
            except InvalidToken:
                # KEY_ENCRYPTION_KEY rotated without re-encrypting: say so, never crash.
                log.error("stored game key cannot be decrypted", order_id=str(view.id))
    return without_keys(view, keys=plain)


def without_keys(view: CachedOrder, *, keys: list[str] | None = None) -> OrderView:
    """The API shape of `view` with `keys` (None: omitted, as for every order not COMPLETED)."""
    return OrderView(**view.model_dump(exclude={"keys_encrypted"}), keys=keys)


def load_order(session: Session, order_id: uuid.UUID) -> CachedOrder:
    """The cacheable view of one order (with `user_id` for the ownership check).

    Loaders read inside the caller's transaction, so the invariant checker can recompute a
    cached entry in its own snapshot."""
    order = session.get(Order, order_id)
    if order is None:
        raise OrderNotFound("order not found")
    return order_view(session, order)


def load_user_orders(session: Session, user_id: uuid.UUID) -> CachedOrderList:
    """All of the user's orders, newest first, as `{items, page, total}` (one cache entry,
    `user:{id}:orders`, invalidated on every change of any of them)."""
    orders = session.execute(
        select(Order)
        .where(Order.user_id == user_id)
        .options(selectinload(Order.items))
        .order_by(Order.created_at.desc(), Order.id)
    ).scalars().all()
    items = [order_view(session, order) for order in orders]
    return CachedOrderList(items=items, page=1, total=len(items))
