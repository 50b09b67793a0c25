"""Moving a guest session's cart and wishlist to the user who just signed in.

One transaction, serialised per user and per session by transaction-scoped advisory locks
taken in a fixed order (user, then session), so two runs for the same pair (a redelivered
message, an inline fallback racing a queued job) never interleave and two runs sharing only
one id cannot deadlock. Within it:
- cart lines for games that are inactive or out of stock are skipped (and reported);
- lines for games the user already has are merged: quantities added, capped at
  `cart.MAX_QUANTITY`; other lines are moved;
- wishlist entries for inactive games are skipped; duplicates of the user's are skipped;
- every guest row read is deleted, so a second run finds nothing and changes nothing.
After commit the four cache keys (both owners, cart and wishlist) are invalidated.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
from prometheus_client import Counter
from sqlalchemy import Row, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import InstrumentedAttribute, Session

from db.models import CartItem, Game, User, WishlistItem
from services.cache import Cache
from services.cart.owner import ItemModel, Owner
from services.cart.schemas import MAX_QUANTITY
from services.cart.service import CART
from services.cart.wishlist import WISHLIST
from services.games.service import Listed, is_buyable, is_listed

log = structlog.get_logger(__name__)

MIGRATION_ROWS = Counter(
    "keysync_guest_migration_rows_total", "Guest cart/wishlist rows by fate", ["fate"]
)  # migrated | merged | skipped_unavailable | skipped_duplicate


@dataclass
class MigrationResult:
    migrated: int = 0  # guest rows (cart and wishlist) moved to the user as new rows
    merged: int = 0  # cart lines added onto a line the user already had
    capped: int = 0  # merged or moved lines whose quantity was cut to MAX_QUANTITY
    skipped_unavailable: int = 0  # guest rows for inactive or out-of-stock games, dropped
    skipped_duplicates: int = 0  # wishlist entries the user already had
    unavailable_game_ids: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(
            self.migrated or self.merged or self.skipped_unavailable or self.skipped_duplicates
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def cache_keys_for(session_id: str, user_id: uuid.UUID) -> list[str]:
    guest, user = Owner.guest(session_id), Owner.user(user_id)
    return [store.key(owner) for owner in (guest, user) for store in (CART, WISHLIST)]


def _advisory_lock(session: Session, name: str) -> None:
    # 64-bit hash of a namespaced name; a collision only serialises two unrelated migrations.
    session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(name, 0))))


def has_guest_data(session: Session, session_id: str) -> bool:
    """Whether `session_id` owns any cart or wishlist rows (a cheap indexed probe)."""
    cart = select(CartItem.id).where(CartItem.session_id == session_id).exists()
    wishlist = select(WishlistItem.id).where(WishlistItem.session_id == session_id).exists()
    return bool(session.execute(select(cart | wishlist)).scalar())


def migrate_guest_data(
    session: Session, cache: Cache, session_id: str, user_id: uuid.UUID
) -> MigrationResult:
    """Move the guest's rows to the user; idempotent. `session` must not be in a transaction."""
    bound = log.bind(user_id=str(user_id), guest_session=session_id[:8])
    result = MigrationResult()
    with session.begin():
        _advisory_lock(session, f"keysync:migrate:user:{user_id}")
        _advisory_lock(session, f"keysync:migrate:session:{session_id}")
        # FOR SHARE keeps the user from being deleted under us (the FK would fail anyway,
        # but then a redelivered message would retry forever instead of ending cleanly).
        if session.execute(
            select(User.id).where(User.id == user_id).with_for_update(read=True)
        ).first() is None:
            bound.warning("guest data migration skipped: user does not exist")
            return result
        _migrate_cart(session, session_id, user_id, result)
        _migrate_wishlist(session, session_id, user_id, result)
    for fate, rows in (
        ("migrated", result.migrated),
        ("merged", result.merged),
        ("skipped_unavailable", result.skipped_unavailable),
        ("skipped_duplicate", result.skipped_duplicates),
    ):
        MIGRATION_ROWS.labels(fate).inc(rows)
    # Unconditionally: a run that finds nothing may be the redelivery of one that committed
    # and died before invalidating, and four UNLINKs cost less than a stale 24 h guest cart.
    cache.invalidate(cache_keys_for(session_id, user_id))
    bound.info(
        "guest data migrated",
        migrated=result.migrated,
        merged=result.merged,
        capped=result.capped,
        skipped_unavailable=result.skipped_unavailable,
        skipped_duplicates=result.skipped_duplicates,
    )
    return result


# The columns differ per table (the cart adds `quantity`); rows are read by name.
GuestRow = Row[*tuple[Any, ...]]


def _lock_guest_rows(
    session: Session, model: ItemModel, session_id: str, *extra: InstrumentedAttribute[int]
) -> Sequence[GuestRow]:
    """The guest's rows with their game's availability, locked until commit."""
    return session.execute(
        select(model.id, model.game_id, *extra, Game.is_active, Game.in_stock)
        .join(Game, Game.id == model.game_id)
        .where(model.session_id == session_id)
        .order_by(model.id)
        .with_for_update(of=model)
    ).all()


def _keep_available(
    rows: Sequence[GuestRow], must_be: Callable[[Listed], bool], result: MigrationResult
) -> list[GuestRow]:
    """The rows whose game passes `must_be`; the others are counted as skipped."""
    available = []
    for row in rows:
        if must_be(row):
            available.append(row)
        else:
            result.skipped_unavailable += 1
            result.unavailable_game_ids.append(str(row.game_id))
    return available


def _migrate_cart(
    session: Session, session_id: str, user_id: uuid.UUID, result: MigrationResult
) -> None:
    guest = _lock_guest_rows(session, CartItem, session_id, CartItem.quantity)
    if not guest:
        return
    available = _keep_available(guest, is_buyable, result)
    if available:
        # Lock the user's lines we are about to merge into, so the counts we report match
        # what the upsert does even if the user edits the cart concurrently.
        existing = {
            row.game_id: row.quantity
            for row in session.execute(
                select(CartItem.game_id, CartItem.quantity)
                .where(
                    CartItem.user_id == user_id,
                    CartItem.game_id.in_([row.game_id for row in available]),
                )
                .with_for_update()
            )
        }
        for row in available:
            wanted = existing.get(row.game_id, 0) + row.quantity
            if row.game_id in existing:
                result.merged += 1
            else:
                result.migrated += 1
            if wanted > MAX_QUANTITY:
                result.capped += 1
        statement = insert(CartItem).values(
            [
                {
                    "user_id": user_id,
                    "game_id": row.game_id,
                    "quantity": min(row.quantity, MAX_QUANTITY),
                }
                for row in available
            ]
        )
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["user_id", "game_id"],
                index_where=CartItem.user_id.is_not(None),
                set_={
                    "quantity": func.least(
                        CartItem.quantity + statement.excluded.quantity, MAX_QUANTITY
                    )
                },
            )
        )
    # Delete exactly the rows read and locked: a line the guest adds while we run stays in
    # the session instead of vanishing unmigrated.
    session.execute(delete(CartItem).where(CartItem.id.in_([row.id for row in guest])))


def _migrate_wishlist(
    session: Session, session_id: str, user_id: uuid.UUID, result: MigrationResult
) -> None:
    guest = _lock_guest_rows(session, WishlistItem, session_id)
    if not guest:
        return
    # Out-of-stock games stay wishable (see services.cart.wishlist); only delisted ones are dropped.
    available = _keep_available(guest, is_listed, result)
    if available:
        inserted = session.execute(
            insert(WishlistItem)
            .values([{"user_id": user_id, "game_id": row.game_id} for row in available])
            .on_conflict_do_nothing(
                index_elements=["user_id", "game_id"],
                index_where=WishlistItem.user_id.is_not(None),
            )
            .returning(WishlistItem.game_id)
        ).all()
        result.migrated += len(inserted)
        result.skipped_duplicates += len(available) - len(inserted)
    session.execute(delete(WishlistItem).where(WishlistItem.id.in_([row.id for row in guest])))
