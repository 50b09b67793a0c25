"""Cart and wishlist services: bounds, availability, owners kept apart, cache invalidation."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from db.models import CartItem, Game, User
from services.cache import keys
from services.cart import service as cart
from services.cart import wishlist
from services.cart.service import Owner


def make_game(session: Any, *, in_stock: bool = True, is_active: bool = True,
              price: str = "10.00", name: str = "Game") -> uuid.UUID:
    game = Game(g2a_product_id=f"p-{uuid.uuid4().hex[:12]}", slug=f"s-{uuid.uuid4().hex}",
                name=name, price=Decimal(price), g2a_price=Decimal(price), in_stock=in_stock,
                is_active=is_active)
    with session.begin():
        session.add(game)
    return game.id


def make_user(session: Any) -> uuid.UUID:
    user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
    with session.begin():
        session.add(user)
    return user.id


def test_put_sets_quantity_and_totals(session: Any, cache: Any) -> None:
    a = make_game(session, price="19.99", name="A")
    b = make_game(session, price="5.00", name="B")
    owner = Owner.guest("g1")
    cart.put_item(session, cache, owner, a, 3)
    cart.put_item(session, cache, owner, a, 2)  # PUT sets, it does not add
    result = cart.put_item(session, cache, owner, b, 1)
    assert result["items"] == [
        {"game_id": str(a), "quantity": 2, "name": "A", "price": "19.99", "available": True},
        {"game_id": str(b), "quantity": 1, "name": "B", "price": "5.00", "available": True},
    ]
    assert result["total"] == "44.98"


@pytest.mark.parametrize("quantity", [0, -1, cart.MAX_QUANTITY + 1])
def test_quantity_bounds(session: Any, cache: Any, quantity: int) -> None:
    game = make_game(session)
    with pytest.raises(cart.InvalidQuantity):
        cart.put_item(session, cache, Owner.guest("g1"), game, quantity)


def test_unknown_and_unavailable_games(session: Any, cache: Any) -> None:
    owner = Owner.user(make_user(session))
    with pytest.raises(cart.GameNotFound):
        cart.put_item(session, cache, owner, uuid.uuid4(), 1)
    with pytest.raises(cart.GameUnavailable):
        cart.put_item(session, cache, owner, make_game(session, in_stock=False), 1)
    with pytest.raises(cart.GameUnavailable):
        cart.put_item(session, cache, owner, make_game(session, is_active=False), 1)
    assert cart.get_cart(session, cache, owner) == {"items": [], "total": "0.00"}


def test_reads_are_cached_and_invalidated_after_each_change(
    session: Any, cache: Any, redis_client: Any
) -> None:
    user_id = make_user(session)
    owner = Owner.user(user_id)
    game = make_game(session)
    cart.get_cart(session, cache, owner)
    assert redis_client.exists(keys.user_cart(user_id))
    assert redis_client.ttl(keys.user_cart(user_id)) <= keys.USER_CART_TTL
    assert cart.put_item(session, cache, owner, game, 4)["items"][0]["quantity"] == 4
    assert cart.delete_item(session, cache, owner, game)["items"] == []
    # Deleting an absent line is a no-op that still answers with the cart.
    assert cart.delete_item(session, cache, owner, game)["items"] == []


def test_concurrent_puts_of_one_game_leave_one_line(sessions: Any, session: Any,
                                                      cache: Any) -> None:
    game = make_game(session)
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
    items = cart.get_cart(session, cache, owner)["items"]
    with session.begin():
        stored = session.scalars(select(CartItem.quantity)).all()
    # One line, and the cached view agrees with Postgres (no stale write-back won the race).
    assert len(stored) == 1 and [i["quantity"] for i in items] == stored


def test_guest_and_user_carts_are_separate(session: Any, cache: Any) -> None:
    game = make_game(session)
    guest, user = Owner.guest("g1"), Owner.user(make_user(session))
    cart.put_item(session, cache, guest, game, 1)
    assert cart.get_cart(session, cache, user)["items"] == []
    assert cart.get_cart(session, cache, Owner.guest("g2"))["items"] == []


def test_wishlist_rules(session: Any, cache: Any) -> None:
    owner = Owner.guest("g1")
    sold_out = make_game(session, in_stock=False, name="Sold out")
    listed = wishlist.put_item(session, cache, owner, sold_out)  # allowed: wait for restock
    assert wishlist.put_item(session, cache, owner, sold_out) == listed  # twice = once
    assert listed["items"] == [{"game_id": str(sold_out), "name": "Sold out", "price": "10.00",
                                "in_stock": False, "is_active": True}]
    with pytest.raises(cart.GameUnavailable):
        wishlist.put_item(session, cache, owner, make_game(session, is_active=False))
    with pytest.raises(cart.GameNotFound):
        wishlist.put_item(session, cache, owner, uuid.uuid4())
    assert wishlist.delete_item(session, cache, owner, sold_out) == {"items": []}


def test_owner_is_exactly_one() -> None:
    with pytest.raises(ValueError):
        Owner()
    with pytest.raises(ValueError):
        Owner(user_id=uuid.uuid4(), session_id="g1")
