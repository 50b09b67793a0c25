"""Wishlist of a user or of a guest session (CONTRACT §5), cached under its owner's key.

Rules: adding an unknown game is 404, a delisted (inactive) game 409. Unlike the cart, an
out-of-stock game may be wished for: waiting for it to come back is what a wishlist is
for. Adding twice is a no-op; removing an absent game is a no-op.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.models import Game, WishlistItem
from services.cache import Cache
from services.cart.service import Owner, load_game, read_transaction

log = structlog.get_logger(__name__)


def get_wishlist(session: Session, cache: Cache, owner: Owner) -> Any:
    """`{items: [{game_id, name, price, in_stock, is_active}]}` (JSON form)."""

    def load() -> dict[str, Any]:
        with read_transaction(session):
            rows = session.execute(
                select(WishlistItem.game_id, Game.name, Game.price, Game.in_stock,
                       Game.is_active)
                .join(Game, Game.id == WishlistItem.game_id)
                .where(owner.where(WishlistItem))
                .order_by(WishlistItem.created_at, WishlistItem.id)
            ).all()
        return {
            "items": [
                {
                    "game_id": row.game_id,
                    "name": row.name,
                    "price": row.price,
                    "in_stock": row.in_stock,
                    "is_active": row.is_active,
                }
                for row in rows
            ]
        }

    return cache.read_through(owner.wishlist_key, owner.wishlist_ttl, load)


def put_item(session: Session, cache: Cache, owner: Owner, game_id: uuid.UUID) -> Any:
    """Add `game_id` to the owner's wishlist; returns the new wishlist."""
    columns, index_where = owner.index_target(WishlistItem)
    with session.begin():
        owner.ensure_exists(session)
        load_game(session, game_id, require_stock=False)
        session.execute(
            insert(WishlistItem)
            .values(**owner.values(), game_id=game_id)
            .on_conflict_do_nothing(index_elements=columns, index_where=index_where)
        )
    cache.invalidate([owner.wishlist_key])
    log.info("wishlist item added", game_id=str(game_id), **owner.log_context())
    return get_wishlist(session, cache, owner)


def delete_item(session: Session, cache: Cache, owner: Owner, game_id: uuid.UUID) -> Any:
    """Remove `game_id` from the owner's wishlist (no-op when absent); returns the new one."""
    with session.begin():
        session.execute(
            delete(WishlistItem).where(owner.where(WishlistItem), WishlistItem.game_id == game_id)
        )
    cache.invalidate([owner.wishlist_key])
    log.info("wishlist item removed", game_id=str(game_id), **owner.log_context())
    return get_wishlist(session, cache, owner)
