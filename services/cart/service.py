"""Cart of a user or of a guest session (CONTRACT §5), cached under its owner's key.

Rules:
- `put` *sets* the quantity of one game (idempotent, like HTTP PUT); 1..MAX_QUANTITY per game.
- Adding or changing a line needs the game to exist (404) and be buyable: active and in
  stock (409). Removing is always allowed and removing an absent line is a no-op.
- Prices shown are the games' current prices when the cart was read; the order service
  reprices at checkout, so a cart cached for up to its TTL never decides what is charged.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import CartItem, Game
from services.cache import Cache, keys
from services.cart.owner import Owner
from services.cart.schemas import MAX_QUANTITY, MIN_QUANTITY, CartLine, CartView
from services.cart.store import CacheKeys, ItemStore
from services.cart.wishlist import WISHLIST
from services.errors import InvalidInput
from services.games.service import is_buyable

__all__ = [
    "CART", "MAX_QUANTITY", "MIN_QUANTITY", "Owner", "delete_item", "get_cart",
    "holder_keys", "is_buyable", "load_cart", "put_item",
]


def load_cart(session: Session, owner: Owner) -> CartView:
    """The owner's cart from Postgres, oldest line first, priced now."""
    rows = session.execute(
        select(CartItem.game_id, CartItem.quantity, Game.name, Game.price, Game.is_active,
               Game.in_stock)
        .join(Game, Game.id == CartItem.game_id)
        .where(owner.where(CartItem))
        .order_by(CartItem.created_at, CartItem.id)
    ).all()
    items = [
        CartLine(game_id=row.game_id, quantity=row.quantity, name=row.name, price=row.price,
                 available=is_buyable(row))
        for row in rows
    ]
    total = sum((row.price * row.quantity for row in rows), Decimal("0.00"))
    return CartView(items=items, total=total)


CART = ItemStore(
    "cart", CartItem, load_cart, CartView,
    CacheKeys(keys.user_cart, keys.USER_CART_TTL, keys.session_cart, keys.SESSION_TTL),
    must_be=is_buyable, update_on_conflict=("quantity",),  # a second put sets the quantity
)


def get_cart(session: Session, cache: Cache, owner: Owner) -> CartView:
    return CART.get(session, cache, owner)


def put_item(
    session: Session, cache: Cache, owner: Owner, game_id: uuid.UUID, quantity: int
) -> CartView:
    """Set the quantity of `game_id` in the owner's cart; returns the new cart."""
    if not MIN_QUANTITY <= quantity <= MAX_QUANTITY:
        raise InvalidInput(f"quantity must be between {MIN_QUANTITY} and {MAX_QUANTITY}")
    return CART.put(session, cache, owner, game_id, quantity=quantity)


def delete_item(session: Session, cache: Cache, owner: Owner, game_id: uuid.UUID) -> CartView:
    """Remove `game_id` from the owner's cart (no-op when absent); returns the new cart."""
    return CART.delete(session, cache, owner, game_id)


def holder_keys(session: Session, game_ids: list[uuid.UUID]) -> list[str]:
    """Cache keys of every cart and wishlist holding one of `game_ids`: they show the games'
    names and prices, so a catalog change to those games makes them stale too."""
    return CART.holders(session, game_ids) + WISHLIST.holders(session, game_ids)
