"""Cart and wishlist services: bounds, availability, owners kept apart, cache invalidation."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from db.models import CartItem
from services.cache import keys
from services.cart import service as cart
from services.cart import wishlist
from services.cart.owner import Owner
from services.cart.schemas import CartLine, CartView, WishlistLine, WishlistView
from services.errors import InvalidInput, Unauthorized
from services.games.errors import GameNotFound, GameUnavailable
from tests.order_helpers import make_game, make_user


def test_put_sets_quantity_and_totals(sessions: Any, session: Any, cache: Any) -> None:
    a = make_game(sessions, price="19.99", name="A")
    b = make_game(sessions, price="5.00", name="B")
    owner = Owner.guest("g1")
    cart.put_item(session, cache, owner, a, 3)
    cart.put_item(session, cache, owner, a, 2)  # PUT sets, it does not add
    result = cart.put_item(session, cache, owner, b, 1)
    assert result.items == [
        CartLine(game_id=a, quantity=2, name="A", price=Decimal("19.99"), available=True),
        CartLine(game_id=b, quantity=1, name="B", price=Decimal("5.00"), available=True),
    ]
    assert str(result.total) == "44.98"
    # The JSON form (what the API answers and the cache stores) keeps money as strings.
    assert result.model_dump(mode="json")["items"][0]["price"] == "19.99"


@pytest.mark.parametrize("quantity", [0, -1, cart.MAX_QUANTITY + 1])
def test_quantity_bounds(sessions: Any, session: Any, cache: Any, quantity: int) -> None:
    game = make_game(sessions)
    with pytest.raises(InvalidInput, match="between 1 and 10"):
        cart.put_item(session, cache, Owner.guest("g1"), game, quantity)


def test_unknown_and_unavailable_games(sessions: Any, session: Any, cache: Any) -> None:
    owner = Owner.user(make_user(sessions))
    with pytest.raises(GameNotFound):
        cart.put_item(session, cache, owner, uuid.uuid4(), 1)
    with pytest.raises(GameUnavailable):
        cart.put_item(session, cache, owner, make_game(sessions, in_stock=False), 1)
    with pytest.raises(GameUnavailable):
        cart.put_item(session, cache, owner, make_game(sessions, is_active=False), 1)
    assert cart.get_cart(session, cache, owner) == CartView(items=[], total=Decimal("0.00"))


def test_a_deleted_users_token_cannot_add(sessions: Any, session: Any, cache: Any) -> None:
    with pytest.raises(Unauthorized, match="does not exist"):
        cart.put_item(session, cache, Owner.user(uuid.uuid4()), make_game(sessions), 1)


def test_reads_are_cached_and_invalidated_after_each_change(
    sessions: Any, session: Any, cache: Any, redis_client: Any
) -> None:
    user_id = make_user(sessions)
    owner = Owner.user(user_id)
    game = make_game(sessions)
    cart.get_cart(session, cache, owner)
    assert redis_client.exists(keys.user_cart(user_id))
    assert redis_client.ttl(keys.user_cart(user_id)) <= keys.USER_CART_TTL
    assert cart.put_item(session, cache, owner, game, 4).items[0].quantity == 4
    assert cart.delete_item(session, cache, owner, game).items == []
    # Deleting an absent line is a no-op that still answers with the cart.
    assert cart.delete_item(session, cache, owner, game).items == []


def test_concurrent_puts_of_one_game_leave_one_line(sessions: Any, session: Any,
                                                      cache: Any) -> None:
    game = make_game(sessions)
    owner = Owner.guest("g1")
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def put(quantity: int) -> None:
        barrier.wait()
        try:
            with sessions() as own:
                cart.put_item(own, cache, owner, game, quantity)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(q,)) for q in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    items = cart.get_cart(session, cache, owner).items
    with session.begin():
        stored = session.scalars(select(CartItem.quantity)).all()
    # One line, and the cached view agrees with Postgres (no stale write-back won the race).
    assert len(stored) == 1 and [i.quantity for i in items] == stored


def test_guest_and_user_carts_are_separate(sessions: Any, session: Any, cache: Any) -> None:
    game = make_game(sessions)
    guest, user = Owner.guest("g1"), Owner.user(make_user(sessions))
    cart.put_item(session, cache, guest, game, 1)
    assert cart.get_cart(session, cache, user).items == []
    assert cart.get_cart(session, cache, Owner.guest("g2")).items == []


def test_wishlist_rules(sessions: Any, session: Any, cache: Any, redis_client: Any) -> None:
    owner = Owner.guest("g1")
    sold_out = make_game(sessions, in_stock=False, name="Sold out")
    listed = wishlist.put_item(session, cache, owner, sold_out)  # allowed: wait for restock
    assert wishlist.put_item(session, cache, owner, sold_out) == listed  # twice = once
    assert listed.items == [WishlistLine(game_id=sold_out, name="Sold out", price=Decimal("10.00"),
                                         in_stock=False, is_active=True)]
    assert redis_client.ttl(keys.session_wishlist("g1")) <= keys.SESSION_TTL
    with pytest.raises(GameUnavailable):
        wishlist.put_item(session, cache, owner, make_game(sessions, is_active=False))
    with pytest.raises(GameNotFound):
        wishlist.put_item(session, cache, owner, uuid.uuid4())
    assert wishlist.delete_item(session, cache, owner, sold_out) == WishlistView(items=[])


def test_holder_keys_name_every_cart_and_wishlist_showing_a_game(
    sessions: Any, session: Any, cache: Any
) -> None:
    game, other = make_game(sessions), make_game(sessions)
    user_id = make_user(sessions)
    cart.put_item(session, cache, Owner.guest("g1"), game, 1)
    wishlist.put_item(session, cache, Owner.user(user_id), game)
    cart.put_item(session, cache, Owner.guest("g2"), other, 1)
    with session.begin():
        held = cart.holder_keys(session, [game])
    assert sorted(held) == sorted([keys.session_cart("g1"), keys.user_wishlist(user_id)])


def test_owner_is_exactly_one() -> None:
    with pytest.raises(ValueError):
        Owner()
    with pytest.raises(ValueError):
        Owner(user_id=uuid.uuid4(), session_id="g1")
