"""Guest -> user migration (T032-T034): merge with cap, skips, atomicity, idempotency, races."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.exc import DBAPIError

from db.models import CartItem, Game, User, WishlistItem
from services.accounts import migration
from services.cart import service as cart
from services.cart import wishlist
from services.cart.service import Owner
from tests.helpers import lock_waiters, wait_until

SID = "guest-session-1"


def make_game(session: Any, name: str, *, in_stock: bool = True, is_active: bool = True,
              price: str = "10.00") -> uuid.UUID:
    game = Game(g2a_product_id=f"p-{uuid.uuid4().hex[:12]}", slug=f"s-{uuid.uuid4().hex}",
                name=name, price=Decimal(price), g2a_price=Decimal(price), in_stock=in_stock,
                is_active=is_active)
    with session.begin():
        session.add(game)
    return game.id


def make_user(session: Any) -> uuid.UUID:
    user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", password_hash="x", name="u")
    with session.begin():
        session.add(user)
    return user.id


def add_rows(session: Any, *, cart_rows: Sequence[tuple[Owner, uuid.UUID, int]] = (),
             wish_rows: Sequence[tuple[Owner, uuid.UUID]] = ()) -> None:
    with session.begin():
        for owner, game_id, qty in cart_rows:
            session.add(CartItem(**owner.values(), game_id=game_id, quantity=qty))
        for owner, game_id in wish_rows:
            session.add(WishlistItem(**owner.values(), game_id=game_id))


def snapshot(session: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with session.begin():
        carts = session.execute(select(CartItem.user_id, CartItem.session_id, CartItem.game_id,
                                       CartItem.quantity)).all()
        wishes = session.execute(select(WishlistItem.user_id, WishlistItem.session_id,
                                        WishlistItem.game_id)).all()
    key = lambda r: tuple(str(v) for v in r)  # noqa: E731
    return sorted(map(tuple, carts), key=key), sorted(map(tuple, wishes), key=key)


@pytest.fixture
def scenario(session: Any) -> dict[str, Any]:
    """A guest with: a new line, a line to merge past the cap, an out-of-stock and an inactive
    game in the cart; a new and a duplicate wishlist entry and one for an inactive game."""
    games = {
        "new": make_game(session, "New"),
        "merge": make_game(session, "Merge"),
        "oos": make_game(session, "Sold out", in_stock=False),
        "gone": make_game(session, "Delisted", is_active=False),
        "wish_new": make_game(session, "Wish new", in_stock=False),
        "wish_dup": make_game(session, "Wish dup"),
    }
    user_id = make_user(session)
    guest, user = Owner.guest(SID), Owner.user(user_id)
    add_rows(session,
             cart_rows=[(guest, games["new"], 2), (guest, games["merge"], 7),
                        (guest, games["oos"], 1), (guest, games["gone"], 1),
                        (user, games["merge"], 6)],
             wish_rows=[(guest, games["wish_new"]), (guest, games["wish_dup"]),
                        (guest, games["gone"]), (user, games["wish_dup"])])
    return {"games": games, "user_id": user_id}


def user_cart(session: Any, user_id: uuid.UUID) -> dict[uuid.UUID, int]:
    with session.begin():
        rows = session.execute(select(CartItem.game_id, CartItem.quantity)
                               .where(CartItem.user_id == user_id))
        return {row.game_id: row.quantity for row in rows}


def user_wishlist(session: Any, user_id: uuid.UUID) -> set[uuid.UUID]:
    with session.begin():
        return set(session.scalars(select(WishlistItem.game_id)
                                   .where(WishlistItem.user_id == user_id)))


def test_merges_caps_skips_and_clears_the_guest(session: Any, cache: Any, redis_client: Any,
                                                scenario: dict[str, Any]) -> None:
    games, user_id = scenario["games"], scenario["user_id"]
    # Warm all four cache keys so the test sees them invalidated, not merely never written.
    for owner in (Owner.guest(SID), Owner.user(user_id)):
        cart.get_cart(session, cache, owner)
        wishlist.get_wishlist(session, cache, owner)
    keys_ = migration.cache_keys_for(SID, user_id)
    assert redis_client.exists(*keys_) == 4

    result = migration.migrate_guest_data(session, cache, SID, user_id)

    assert (result.migrated, result.merged, result.capped) == (2, 1, 1)  # 1 cart + 1 wishlist
    assert (result.skipped_unavailable, result.skipped_duplicates) == (3, 1)
    assert set(result.unavailable_game_ids) == {str(games["oos"]), str(games["gone"])}
    assert user_cart(session, user_id) == {games["new"]: 2, games["merge"]: cart.MAX_QUANTITY}
    assert user_wishlist(session, user_id) == {games["wish_new"], games["wish_dup"]}
    carts, wishes = snapshot(session)
    assert all(row[1] is None for row in carts + wishes), "guest rows must be gone"
    assert redis_client.exists(*keys_) == 0


def test_failure_midway_leaves_both_owners_untouched(session: Any, cache: Any, engine: Any,
                                                     scenario: dict[str, Any]) -> None:
    before = snapshot(session)
    # A real database failure after the cart upsert has run: the wishlist insert raises.
    with engine.begin() as conn:
        conn.exec_driver_sql("""
            CREATE FUNCTION test_fail_wishlist() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
            CREATE TRIGGER test_fail_wishlist BEFORE INSERT ON wishlist_items
            FOR EACH ROW WHEN (NEW.user_id IS NOT NULL) EXECUTE FUNCTION test_fail_wishlist();
        """)
    try:
        with pytest.raises(DBAPIError, match="injected failure"):
            migration.migrate_guest_data(session, cache, SID, scenario["user_id"])
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER test_fail_wishlist ON wishlist_items;"
                                 "DROP FUNCTION test_fail_wishlist();")
    assert snapshot(session) == before
    # And the same data migrates fine once the fault is gone.
    assert migration.migrate_guest_data(session, cache, SID, scenario["user_id"]).merged == 1


def test_idempotent_second_run_changes_nothing(session: Any, cache: Any,
                                               scenario: dict[str, Any]) -> None:
    migration.migrate_guest_data(session, cache, SID, scenario["user_id"])
    after_first = snapshot(session)
    again = migration.migrate_guest_data(session, cache, SID, scenario["user_id"])
    assert not again.changed
    assert snapshot(session) == after_first


def test_two_concurrent_runs_equal_one(sessions: Any, session: Any, cache: Any, engine: Any,
                                       scenario: dict[str, Any]) -> None:
    user_id = scenario["user_id"]
    results: list[migration.MigrationResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with sessions() as own:
                results.append(migration.migrate_guest_data(own, cache, SID, user_id))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    # Hold the user's migration lock so both runs are provably in flight at the same time,
    # then release it: they must serialise, not double-merge.
    with engine.connect() as blocker:
        blocker.execute(text("SELECT pg_advisory_lock(hashtextextended(:n, 0))"),
                        {"n": f"keysync:migrate:user:{user_id}"})
        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        wait_until(lambda: lock_waiters(engine, "advisory") == 2, 10,
                   "both runs waiting on the user's migration lock")
        assert all(t.is_alive() for t in threads)
        blocker.execute(text("SELECT pg_advisory_unlock(hashtextextended(:n, 0))"),
                        {"n": f"keysync:migrate:user:{user_id}"})
        blocker.commit()
    for t in threads:
        t.join(10)
    assert not errors
    assert sorted(r.merged for r in results) == [0, 1]
    assert sorted(r.migrated for r in results) == [0, 2]
    assert user_cart(session, scenario["user_id"])[scenario["games"]["merge"]] == 10


def test_unknown_user_leaves_guest_rows(session: Any, cache: Any,
                                        scenario: dict[str, Any]) -> None:
    before = snapshot(session)
    result = migration.migrate_guest_data(session, cache, SID, uuid.uuid4())
    assert not result.changed
    assert snapshot(session) == before


def test_has_guest_data(session: Any, scenario: dict[str, Any]) -> None:
    with session.begin():
        assert migration.has_guest_data(session, SID)
        assert not migration.has_guest_data(session, "someone-else")


def test_migration_costs_three_statements(session: Any, cache: Any, engine: Any,
                                          scenario: dict[str, Any]) -> None:
    """Locks, one read of both guest tables, one merge of both (plus BEGIN/COMMIT); a second
    run stops after the read."""
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        first = migration.migrate_guest_data(session, cache, SID, scenario["user_id"])
        assert len(statements) == 3, statements
        statements.clear()
        again = migration.migrate_guest_data(session, cache, SID, scenario["user_id"])
        assert len(statements) == 2, statements
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert (first.migrated, first.merged, first.capped) == (2, 1, 1)
    assert (first.skipped_unavailable, first.skipped_duplicates) == (3, 1)
    assert not again.changed
