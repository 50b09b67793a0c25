"""Wishlist of a user or of a guest session (CONTRACT §5), cached under its owner's key.

Rules: adding an unknown game is 404, a delisted (inactive) game 409. Unlike the cart, an
out-of-stock game may be wished for: waiting for it to come back is what a wishlist is
for. Adding twice is a no-op; removing an absent game is a no-op.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Game, WishlistItem
from services.cache import Cache, keys
from services.cart.owner import Owner
from services.cart.schemas import WishlistLine, WishlistView
from services.cart.store import CacheKeys, ItemStore
from services.games.service import is_listed


def load_wishlist(session: Session, owner: Owner) -> WishlistView:
    """The owner's wishlist from Postgres, oldest entry first."""
    rows = session.execute(
        select(WishlistItem.game_id, Game.name, Game.price, Game.in_stock, Game.is_active)
        .join(Game, Game.id == WishlistItem.game_id)
        .where(owner.where(WishlistItem))
        .order_by(WishlistItem.created_at, WishlistItem.id)
    ).all()
    return WishlistView(items=[WishlistLine.model_validate(dict(row._mapping)) for row in rows])


WISHLIST = ItemStore(
    "wishlist", WishlistItem, load_wishlist, WishlistView,
    CacheKeys(keys.user_wishlist, keys.WISHLIST_TTL, keys.session_wishlist, keys.SESSION_TTL),
    must_be=is_listed,  # a second put of the same game is a no-op
)


def get_wishlist(session: Session, cache: Cache, owner: Owner) -> WishlistView:
    return WISHLIST.get(session, cache, owner)


def put_item(session: Session, cache: Cache, owner: Owner, game_id: uuid.UUID) -> WishlistView:
    """Add `game_id` to the owner's wishlist; returns the new wishlist."""
    return WISHLIST.put(session, cache, owner, game_id)


def delete_item(
    session: Session, cache: Cache, owner: Owner, game_id: uuid.UUID
) -> WishlistView:
    """Remove `game_id` from the owner's wishlist (no-op when absent); returns the new one."""
    return WISHLIST.delete(session, cache, owner, game_id)
