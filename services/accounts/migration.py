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
from sqlalchemy import Connection, Row, select, text
from sqlalchemy.orm import Session

from db.models import CartItem, WishlistItem
from services.cache import Cache
from services.cart.owner import Owner
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


# Both migration locks (user, then session: the target list is evaluated in order) and the
# user's row FOR SHARE, which keeps the user from being deleted under us (the FK would fail
# anyway, but then a redelivered message would retry forever instead of ending cleanly).
# The 64-bit hash of a namespaced name: a collision only serialises two unrelated migrations.
_LOCK = text(
    """
    SELECT pg_advisory_xact_lock(hashtextextended(:user_lock, 0)),
           pg_advisory_xact_lock(hashtextextended(:session_lock, 0)),
           (SELECT id FROM users WHERE id = :user_id FOR SHARE) AS owner
    """
)
# Every guest row of both tables with its game's availability, locked until commit, and
# (cart) the quantity of the user's line for the same game, locked too so the counts we
# report match what the merge does even if the user edits the cart concurrently.
_READ_GUEST = text(
    """
    WITH cart AS MATERIALIZED (
        SELECT c.id, c.game_id, c.quantity, g.is_active, g.in_stock
        FROM cart_items c JOIN games g ON g.id = c.game_id
        WHERE c.session_id = :session_id
        ORDER BY c.id
        FOR UPDATE OF c
    ), mine AS MATERIALIZED (
        SELECT game_id, quantity FROM cart_items
        WHERE user_id = :user_id AND game_id IN (SELECT game_id FROM cart)
        FOR UPDATE
    ), wish AS MATERIALIZED (
        SELECT w.id, w.game_id, g.is_active, g.in_stock
        FROM wishlist_items w JOIN games g ON g.id = w.game_id
        WHERE w.session_id = :session_id
        ORDER BY w.id
        FOR UPDATE OF w
    )
    SELECT 'cart' AS kind, cart.id, cart.game_id, cart.quantity, cart.is_active,
           cart.in_stock, mine.quantity AS mine
    FROM cart LEFT JOIN mine ON mine.game_id = cart.game_id
    UNION ALL
    SELECT 'wishlist', wish.id, wish.game_id, 0, wish.is_active, wish.in_stock, NULL
    FROM wish
    ORDER BY kind, id
    """
)
# The merge in one statement: available cart lines added onto the user's (capped) or moved,
# available wishlist entries moved unless the user has them, and exactly the guest rows read
# deleted (a line the guest adds while we run stays in the session instead of vanishing
# unmigrated). Returns how many wishlist entries were new to the user.
_MERGE = text(
    """
    WITH cart AS (
        INSERT INTO cart_items (user_id, game_id, quantity)
        SELECT :user_id, t.game_id, least(t.quantity, :max_quantity)
        FROM unnest(CAST(:cart_games AS uuid[]), CAST(:cart_quantities AS integer[]))
            AS t(game_id, quantity)
        ON CONFLICT (user_id, game_id) WHERE user_id IS NOT NULL
        DO UPDATE SET quantity = least(cart_items.quantity + excluded.quantity, :max_quantity)
    ), cart_gone AS (
        DELETE FROM cart_items WHERE id = ANY(CAST(:cart_ids AS bigint[]))
    ), wished AS (
        INSERT INTO wishlist_items (user_id, game_id)
        SELECT :user_id, t.game_id FROM unnest(CAST(:wish_games AS uuid[])) AS t(game_id)
        ON CONFLICT (user_id, game_id) WHERE user_id IS NOT NULL DO NOTHING
        RETURNING game_id
    ), wish_gone AS (
        DELETE FROM wishlist_items WHERE id = ANY(CAST(:wish_ids AS bigint[]))
    )
    SELECT count(*) FROM wished
    """
)


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
        conn = session.connection()
        if conn.execute(_LOCK, {
            "user_lock": f"keysync:migrate:user:{user_id}",
            "session_lock": f"keysync:migrate:session:{session_id}",
            "user_id": user_id,
        }).one().owner is None:
            bound.warning("guest data migration skipped: user does not exist")
            return result
        guest = conn.execute(_READ_GUEST, {"session_id": session_id, "user_id": user_id}).all()
        if guest:
            _merge(conn, user_id, guest, result)
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


def _merge(
    conn: Connection, user_id: uuid.UUID, guest: Sequence[GuestRow], result: MigrationResult
) -> None:
    """Count what the merge of the locked `guest` rows does, then do it in one statement."""
    cart = [row for row in guest if row.kind == "cart"]
    wishes = [row for row in guest if row.kind == "wishlist"]
    moved = _keep_available(cart, is_buyable, result)
    for row in moved:
        if row.mine is not None:
            result.merged += 1
        else:
            result.migrated += 1
        if (row.mine or 0) + row.quantity > MAX_QUANTITY:
            result.capped += 1
    # Out-of-stock games stay wishable (see services.cart.wishlist); only delisted ones go.
    wished = _keep_available(wishes, is_listed, result)
    inserted = conn.execute(_MERGE, {
        "user_id": user_id,
        "max_quantity": MAX_QUANTITY,
        "cart_games": [row.game_id for row in moved],
        "cart_quantities": [row.quantity for row in moved],
        "cart_ids": [row.id for row in cart],
        "wish_games": [row.game_id for row in wished],
        "wish_ids": [row.id for row in wishes],
    }).scalar_one()
    result.migrated += inserted
    result.skipped_duplicates += len(wished) - inserted


# Rows of `_READ_GUEST`, read by name.
GuestRow = Row[*tuple[Any, ...]]


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
