"""Buying: create an order atomically, and read orders for the API.

`create_order` is one Postgres transaction: lock the user row, price the items from the
current `games.price`, insert the order (PENDING), its items and the PURCHASE transaction,
debit the balance, clear the cart when the order came from it, and enqueue `fulfil_order`
(`worker.enqueue`: staged in the job outbox, sent after commit; the outbox relay re-sends it
if the broker is down or we die first). Any failure rolls all of it back (no order, no
transaction, balance unchanged, no job). After commit the user's order/cart/transaction
caches are invalidated.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import dramatiq
import structlog
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from db.models import (
    CartItem,
    G2APurchase,
    G2APurchaseStatus,
    Game,
    Order,
    OrderItem,
    OrderStatus,
    Transaction,
    TransactionStatus,
    TransactionType,
    User,
)
from services.cache import Cache, keys
from services.cart.service import is_buyable
from worker.enqueue import Actor, enqueue

log = structlog.get_logger(__name__)

CENT = Decimal("0.01")


class OrderError(Exception):
    """A refusal the API reports as-is: `status` and `code` follow CONTRACT §5."""

    status = 400
    code = "order_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyOrder(OrderError):
    status = 422
    code = "empty_order"


class GameUnavailable(OrderError):
    status = 409
    code = "game_unavailable"


class InsufficientBalance(OrderError):
    status = 402
    code = "insufficient_balance"


class OrderNotFound(OrderError):
    status = 404
    code = "not_found"


@dataclass(frozen=True, slots=True)
class LineRequest:
    game_id: uuid.UUID
    quantity: int


def _merge(lines: Sequence[LineRequest]) -> dict[uuid.UUID, int]:
    merged: dict[uuid.UUID, int] = {}
    for line in lines:
        if line.quantity <= 0:
            raise EmptyOrder("quantities must be positive")
        merged[line.game_id] = merged.get(line.game_id, 0) + line.quantity
    return merged


def create_order(
    sessions: sessionmaker[Session],
    broker: dramatiq.Broker,
    cache: Cache,
    user_id: uuid.UUID,
    items: Sequence[LineRequest] | None = None,
) -> dict[str, Any]:
    """Create and pay an order from `items`, or from the user's cart when None.

    Raises EmptyOrder, GameUnavailable or InsufficientBalance (nothing written then).
    Returns the order in its API shape.
    """
    bound = log.bind(user_id=str(user_id))
    with sessions() as session:
        with session.begin():
            order = _create_in_transaction(session, user_id, items)
            # Sent after commit, never raising: a broker failure must not turn a committed
            # purchase into an error the client retries (and so buys twice).
            enqueue(session, broker, Actor.FULFIL_ORDER, str(order.id))
            view = _order_view(session, order, with_keys=False)
        bound.info("order created", order_id=str(order.id), total=str(order.total))
    cache.invalidate(
        [keys.user_orders(user_id), keys.user_cart(user_id), keys.user_transactions(user_id)]
    )
    return view


def _create_in_transaction(
    session: Session, user_id: uuid.UUID, items: Sequence[LineRequest] | None
) -> Order:
    # The user row lock serialises every purchase of this user, so two concurrent orders
    # cannot both pass the balance check on the same money.
    user = session.execute(
        select(User).where(User.id == user_id).with_for_update()
    ).scalar_one_or_none()
    if user is None:
        raise OrderNotFound("user not found")

    cart_ids: list[int] = []
    if items is None:
        # Locked so a concurrent cart edit waits and then finds the rows gone, instead of
        # changing a quantity we already charged for.
        cart = session.execute(
            select(CartItem)
            .where(CartItem.user_id == user_id)
            .order_by(CartItem.id)
            .with_for_update()
        ).scalars().all()
        cart_ids = [row.id for row in cart]
        items = [LineRequest(row.game_id, row.quantity) for row in cart]
    wanted = _merge(items)
    if not wanted:
        raise EmptyOrder("the order has no items (the cart is empty)")

    games = {
        game.id: game
        for game in session.execute(select(Game).where(Game.id.in_(wanted))).scalars()
    }
    for game_id in wanted:
        game = games.get(game_id)
        if game is None or not is_buyable(game):
            raise GameUnavailable(f"game {game_id} is not available")

    total = sum(
        (games[gid].price * qty for gid, qty in wanted.items()), Decimal("0")
    ).quantize(CENT)
    if user.balance < total:
        raise InsufficientBalance(f"balance {user.balance} is below the order total {total}")

    order = Order(user_id=user_id, status=OrderStatus.PENDING, total=total)
    session.add(order)
    session.flush()
    session.execute(
        insert(OrderItem),
        [
            {"order_id": order.id, "game_id": gid, "quantity": qty, "unit_price": games[gid].price}
            for gid, qty in wanted.items()
        ],
    )
    if total > 0:  # the amount > 0 check forbids a zero-amount row
        session.add(
            Transaction(
                user_id=user_id,
                order_id=order.id,
                type=TransactionType.PURCHASE,
                amount=total,
                status=TransactionStatus.COMPLETED,
            )
        )
    # Relative update under the row lock; the balance >= 0 check is the last line of defence.
    session.execute(
        update(User).where(User.id == user_id).values(balance=User.balance - total)
    )
    if cart_ids:
        session.execute(delete(CartItem).where(CartItem.id.in_(cart_ids)))
    session.flush()
    session.refresh(order, ["items"])
    return order


# --- reads -------------------------------------------------------------------------------
#
# Cached order views hold the stored Fernet tokens, never plaintext keys: Redis only ever
# sees ciphertext, and `present` decrypts for the one response that needs them.


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


def _order_view(session: Session, order: Order, *, with_keys: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": str(order.id),
        "user_id": str(order.user_id),
        "status": order.status.value,
        "total": str(order.total),
        "items": [
            {
                "game_id": str(item.game_id),
                "quantity": item.quantity,
                "unit_price": str(item.unit_price),
            }
            for item in order.items
        ],
        "created_at": order.created_at.isoformat(),
        "updated_at": order.updated_at.isoformat(),
    }
    if with_keys and order.status is OrderStatus.COMPLETED:
        view["keys_encrypted"] = _encrypted_keys(session, order)
    return view


def present(view: dict[str, Any], key_encryption_key: str) -> dict[str, Any]:
    """The API shape of a (possibly cached) view: keys decrypted, only when COMPLETED."""
    out = {k: v for k, v in view.items() if k != "keys_encrypted"}
    if view.get("status") == OrderStatus.COMPLETED.value:
        fernet = Fernet(key_encryption_key.encode())
        plain: list[str] = []
        for token in view.get("keys_encrypted", []):
            try:
                plain.append(fernet.decrypt(token.encode()).decode())
            except InvalidToken:
                # KEY_ENCRYPTION_KEY rotated without re-encrypting: say so, never crash.
                log.error("stored game key cannot be decrypted", order_id=view.get("id"))
        out["keys"] = plain
    return out


def load_order(session: Session, order_id: uuid.UUID) -> dict[str, Any]:
    """The cacheable view of one order (with `user_id` for the ownership check).

    Loaders read inside the caller's transaction, so the invariant checker can recompute a
    cached entry in its own snapshot."""
    order = session.get(Order, order_id)
    if order is None:
        raise OrderNotFound("order not found")
    return _order_view(session, order)


def load_user_orders(session: Session, user_id: uuid.UUID) -> dict[str, Any]:
    """All of the user's orders, newest first, as `{items, page, total}` (one cache entry,
    `user:{id}:orders`, invalidated on every change of any of them)."""
    orders = session.execute(
        select(Order)
        .where(Order.user_id == user_id)
        .options(selectinload(Order.items))
        .order_by(Order.created_at.desc(), Order.id)
    ).scalars().all()
    items = [_order_view(session, order) for order in orders]
    return {"items": items, "page": 1, "total": len(items)}


def get_order(
    session: Session,
    cache: Cache,
    user_id: uuid.UUID,
    order_id: uuid.UUID,
    *,
    key_encryption_key: str,
) -> dict[str, Any]:
    """One of the user's orders through the cache; OrderNotFound for a missing order and
    for another user's order alike, so ids cannot be probed."""
    # A cache hit never touches Postgres: the transaction only connects on first use.
    with session.begin():
        view: dict[str, Any] = cache.read_through(
            keys.order(order_id), keys.ORDER_TTL, lambda: load_order(session, order_id)
        )
    if view.get("user_id") != str(user_id):
        raise OrderNotFound("order not found")
    return present(view, key_encryption_key)


def list_orders(
    session: Session, cache: Cache, user_id: uuid.UUID, *, key_encryption_key: str
) -> dict[str, Any]:
    with session.begin():
        listing: dict[str, Any] = cache.read_through(
            keys.user_orders(user_id),
            keys.USER_ORDERS_TTL,
            lambda: load_user_orders(session, user_id),
        )
    listing["items"] = [present(v, key_encryption_key) for v in listing["items"]]
    return listing
