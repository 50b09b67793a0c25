"""Buying: create an order atomically; reading orders through the cache for the API.

`create_order` is one Postgres transaction: lock the user row, merge duplicate lines (1..10
units per game after merging), price the items from the current `games.price`, refuse more
units than G2A lists (`games.g2a_qty`) and a total other than the customer's
`expected_total`, insert the order (PENDING), its items and the PURCHASE transaction,
debit the balance, clear the cart when the order came from it, and enqueue `fulfil_order`
(`worker.enqueue`: staged in the job outbox, sent after commit; the outbox relay re-sends it
if the broker is down or we die first). Any failure rolls all of it back (no order, no
transaction, balance unchanged, no job). After commit the user's order/cart/transaction
caches are invalidated.

Reads go through the cache (`order:{id}`, `user:{id}:orders`); the views and their loaders
are in `queries`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

import dramatiq
import structlog
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import (
    CartItem,
    Game,
    Order,
    OrderItem,
    Transaction,
    TransactionStatus,
    TransactionType,
    User,
)
from services.cache import Cache, keys
from services.cart.schemas import MAX_QUANTITY
from services.cart.service import is_buyable
from services.errors import InvalidInput
from services.games.errors import GameUnavailable
from services.orders import queries
from services.orders.errors import (
    EmptyOrder,
    InsufficientBalance,
    InsufficientStock,
    InvalidQuantity,
    OrderNotFound,
    PriceChanged,
)
from services.orders.schemas import CachedOrder, CachedOrderList, OrderList, OrderView
from worker.enqueue import Actor, enqueue

log = structlog.get_logger(__name__)

CENT = Decimal("0.01")

_View = TypeVar("_View", CachedOrder, CachedOrderList)


@dataclass(frozen=True, slots=True)
class LineRequest:
    game_id: uuid.UUID
    quantity: int


def _merge(lines: Sequence[LineRequest]) -> dict[uuid.UUID, int]:
    """Units per game. The cap applies after merging: duplicate lines are one purchase, so
    100 lines of 10 cannot buy 1,000 keys of one game."""
    merged: dict[uuid.UUID, int] = {}
    for line in lines:
        if line.quantity <= 0:
            raise EmptyOrder("quantities must be positive")
        merged[line.game_id] = merged.get(line.game_id, 0) + line.quantity
        if merged[line.game_id] > MAX_QUANTITY:
            raise InvalidQuantity(
                f"game {line.game_id}: at most {MAX_QUANTITY} units per game "
                f"(duplicate lines are added up), {merged[line.game_id]} requested"
            )
    return merged


def create_order(
    sessions: sessionmaker[Session],
    broker: dramatiq.Broker,
    cache: Cache,
    user_id: uuid.UUID,
    items: Sequence[LineRequest] | None = None,
    *,
    expected_total: Decimal | None = None,
) -> OrderView:
    """Create and pay an order from `items`, or from the user's cart when None.

    `expected_total`: the total the customer was shown; if the current prices give another
    total, PriceChanged (with the current total) and nothing is bought.
    Raises EmptyOrder, InvalidQuantity, GameUnavailable, InsufficientStock, PriceChanged or
    InsufficientBalance (nothing written then). Returns the order in its API shape.
    """
    if expected_total is not None and (
        not expected_total.is_finite() or expected_total < 0
        or expected_total != expected_total.quantize(CENT)
    ):
        raise InvalidInput("expected_total must be a non-negative amount with at most 2 decimals")
    bound = log.bind(user_id=str(user_id))
    with sessions() as session:
        with session.begin():
            order = _create_in_transaction(session, user_id, items, expected_total)
            # Sent after commit, never raising: a broker failure must not turn a committed
            # purchase into an error the client retries (and so buys twice).
            enqueue(session, broker, Actor.FULFIL_ORDER, str(order.id))
            created = queries.order_view(session, order, with_keys=False)
        bound.info("order created", order_id=str(order.id), total=str(order.total))
    cache.invalidate(
        [keys.user_orders(user_id), keys.user_cart(user_id), keys.user_transactions(user_id)]
    )
    return queries.without_keys(created)  # a new order is PENDING: no keys yet


def _create_in_transaction(
    session: Session,
    user_id: uuid.UUID,
    items: Sequence[LineRequest] | None,
    expected_total: Decimal | None,
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
            raise GameUnavailable(game_id)
    for game_id, quantity in wanted.items():
        # Fulfilment checks G2A again before buying (its stock may have fallen since the
        # last sync); this refuses what we already know cannot be delivered in full.
        if quantity > games[game_id].g2a_qty:
            raise InsufficientStock(game_id, quantity, games[game_id].g2a_qty)

    total = sum(
        (games[gid].price * qty for gid, qty in wanted.items()), Decimal("0")
    ).quantize(CENT)
    # Before the balance: a customer whose price moved must hear that, not "top up".
    if expected_total is not None and expected_total != total:
        raise PriceChanged(expected_total, total)
    if user.balance < total:
        raise InsufficientBalance(f"balance {user.balance} is below the order total {total}")

    order = Order(user_id=user_id, total=total)  # PENDING: the model's default
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


def get_order(
    session: Session,
    cache: Cache,
    user_id: uuid.UUID,
    order_id: uuid.UUID,
    *,
    key_encryption_key: str,
) -> OrderView:
    """One of the user's orders through the cache; OrderNotFound for a missing order and
    for another user's order alike, so ids cannot be probed."""
    view = _read_through(
        session, cache, keys.order(order_id), keys.ORDER_TTL, CachedOrder,
        lambda: queries.load_order(session, order_id),
    )
    if view.user_id != user_id:
        raise OrderNotFound("order not found")
    return queries.present(view, key_encryption_key)


def list_orders(
    session: Session, cache: Cache, user_id: uuid.UUID, *, key_encryption_key: str
) -> OrderList:
    """All of the user's orders, newest first, through one cache entry."""
    listing = _read_through(
        session, cache, keys.user_orders(user_id), keys.USER_ORDERS_TTL, CachedOrderList,
        lambda: queries.load_user_orders(session, user_id),
    )
    return OrderList(
        items=[queries.present(v, key_encryption_key) for v in listing.items],
        page=listing.page,
        total=listing.total,
    )


def _read_through(
    session: Session,
    cache: Cache,
    key: str,
    ttl_s: int,
    schema: type[_View],
    load: Callable[[], _View],
) -> _View:
    # A cache hit never touches Postgres: the transaction only connects on first use.
    with session.begin():
        return schema.model_validate(cache.read_through(key, ttl_s, lambda: load().to_cache()))
