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
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import structlog
from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.models import CartItem, Game, User, WishlistItem
from services.cache import Cache, keys

log = structlog.get_logger(__name__)

MIN_QUANTITY = 1
MAX_QUANTITY = 10


class GameNotFound(Exception):
    pass


class GameUnavailable(Exception):
    """The game is delisted (inactive) or out of stock."""


class InvalidQuantity(ValueError):
    pass


class OwnerNotFound(Exception):
    """A well-signed token names a user that no longer exists (deleted, restored database)."""


@dataclass(frozen=True)
class Owner:
    """Exactly one of a signed-in user or a guest session owns a cart and a wishlist."""

    user_id: uuid.UUID | None = None
    session_id: str | None = None

    def __post_init__(self) -> None:
        if (self.user_id is None) == (self.session_id is None):
            raise ValueError("an owner is exactly one of user_id or session_id")

    @classmethod
    def user(cls, user_id: uuid.UUID) -> Owner:
        return cls(user_id=user_id)

    @classmethod
    def guest(cls, session_id: str) -> Owner:
        return cls(session_id=session_id)

    def where(self, model: type[CartItem] | type[WishlistItem]) -> ColumnElement[bool]:
        if self.user_id is not None:
            return model.user_id == self.user_id
        return model.session_id == self.session_id

    def values(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "session_id": self.session_id}

    @property
    def cart_key(self) -> str:
        if self.user_id is not None:
            return keys.user_cart(self.user_id)
        return keys.session_cart(self.session_id)

    @property
    def cart_ttl(self) -> int:
        return keys.USER_CART_TTL if self.user_id is not None else keys.SESSION_TTL

    @property
    def wishlist_key(self) -> str:
        if self.user_id is not None:
            return keys.user_wishlist(self.user_id)
        return keys.session_wishlist(self.session_id)

    @property
    def wishlist_ttl(self) -> int:
        return keys.WISHLIST_TTL if self.user_id is not None else keys.SESSION_TTL

    def log_context(self) -> dict[str, str]:
        # Session ids are bearer-like for guests; log only a short prefix to correlate lines.
        if self.user_id is not None:
            return {"user_id": str(self.user_id)}
        return {"guest_session": (self.session_id or "")[:8]}

    def ensure_exists(self, session: Session) -> None:
        """Before adding a row: the user owner must exist, and stays until commit (KEY SHARE
        lock), so the insert cannot hit the foreign key. Guest sessions need no row."""
        if self.user_id is None:
            return
        found = session.execute(
            select(User.id).where(User.id == self.user_id).with_for_update(key_share=True)
        ).first()
        if found is None:
            raise OwnerNotFound(str(self.user_id))

    def index_target(
        self, model: type[CartItem] | type[WishlistItem]
    ) -> tuple[list[str], ColumnElement[bool]]:
        """ON CONFLICT target matching the owner's partial unique index."""
        if self.user_id is not None:
            return ["user_id", "game_id"], model.user_id.is_not(None)
        return ["session_id", "game_id"], model.session_id.is_not(None)


def holder_keys(session: Session, game_ids: list[uuid.UUID]) -> list[str]:
    """Cache keys of every cart and wishlist holding one of `game_ids`: they show the games'
    names and prices, so a catalog change to those games makes them stale too."""
    keys_: list[str] = []
    for model, key_of in ((CartItem, "cart_key"), (WishlistItem, "wishlist_key")):
        rows = session.execute(
            select(model.user_id, model.session_id).where(model.game_id.in_(game_ids)).distinct()
        ).all()
        keys_ += [getattr(Owner(user_id=u, session_id=s), key_of) for u, s in rows]
    return keys_


class _Listed(Protocol):
    @property
    def is_active(self) -> bool: ...
    @property
    def in_stock(self) -> bool: ...


def is_buyable(game: _Listed) -> bool:
    """The one rule for what can go into a cart or an order: listed and in stock."""
    return game.is_active and game.in_stock


def load_game(session: Session, game_id: uuid.UUID, *, require_stock: bool = True) -> Game:
    """The game to add, or GameNotFound / GameUnavailable."""
    game = session.get(Game, game_id)
    if game is None:
        raise GameNotFound(str(game_id))
    if not (is_buyable(game) if require_stock else game.is_active):
        raise GameUnavailable(str(game_id))
    return game


def read_transaction(session: Session) -> AbstractContextManager[object]:
    """A short read transaction, or the caller's if one is open.

    Ending it right after the read hands the connection back to the pool and lets the same
    session run a write transaction next (a lingering autobegun one would refuse `begin()`).
    """
    return nullcontext() if session.in_transaction() else session.begin()


def get_cart(session: Session, cache: Cache, owner: Owner) -> Any:
    """`{items: [{game_id, quantity, name, price, available}], total}` (JSON form)."""

    def load() -> dict[str, Any]:
        with read_transaction(session):
            rows = session.execute(
                select(CartItem.game_id, CartItem.quantity, Game.name, Game.price,
                       Game.is_active, Game.in_stock)
                .join(Game, Game.id == CartItem.game_id)
                .where(owner.where(CartItem))
                .order_by(CartItem.created_at, CartItem.id)
            ).all()
        items = [
            {
                "game_id": row.game_id,
                "quantity": row.quantity,
                "name": row.name,
                "price": row.price,
                "available": is_buyable(row),
            }
            for row in rows
        ]
        total = sum((row.price * row.quantity for row in rows), Decimal("0.00"))
        return {"items": items, "total": total}

    return cache.read_through(owner.cart_key, owner.cart_ttl, load)


def put_item(
    session: Session, cache: Cache, owner: Owner, game_id: uuid.UUID, quantity: int
) -> Any:
    """Set the quantity of `game_id` in the owner's cart; returns the new cart."""
    if not MIN_QUANTITY <= quantity <= MAX_QUANTITY:
        raise InvalidQuantity(f"quantity must be between {MIN_QUANTITY} and {MAX_QUANTITY}")
    columns, index_where = owner.index_target(CartItem)
    with session.begin():
        owner.ensure_exists(session)
        load_game(session, game_id)
        # An upsert on the owner's unique index: two concurrent PUTs for the same game both
        # succeed and the last one wins, instead of one failing on a duplicate insert.
        statement = insert(CartItem).values(**owner.values(), game_id=game_id, quantity=quantity)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=columns,
                index_where=index_where,
                set_={"quantity": statement.excluded.quantity},
            )
        )
    cache.invalidate([owner.cart_key])
    log.info("cart item set", game_id=str(game_id), quantity=quantity, **owner.log_context())
    return get_cart(session, cache, owner)


def delete_item(session: Session, cache: Cache, owner: Owner, game_id: uuid.UUID) -> Any:
    """Remove `game_id` from the owner's cart (no-op when absent); returns the new cart."""
    with session.begin():
        session.execute(
            delete(CartItem).where(owner.where(CartItem), CartItem.game_id == game_id)
        )
    cache.invalidate([owner.cart_key])
    log.info("cart item removed", game_id=str(game_id), **owner.log_context())
    return get_cart(session, cache, owner)
