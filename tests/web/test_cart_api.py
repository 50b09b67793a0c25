"""HTTP cart and wishlist for guests and users; the owner comes only from the token."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.models import CartItem, Game, WishlistItem

# Guest session ids are 22-128 characters (CONTRACT §5).
GUEST = "guest-0123456789abcdefghij"
OTHER_GUEST = "guest-zyxwvutsrqponmlkjih"


def make_game(session: Any, *, in_stock: bool = True, is_active: bool = True,
              price: str = "10.00") -> uuid.UUID:
    game = Game(g2a_product_id=f"p-{uuid.uuid4().hex[:12]}", slug=f"s-{uuid.uuid4().hex}",
                name="Game", price=Decimal(price), g2a_price=Decimal(price), in_stock=in_stock,
                is_active=is_active)
    with session.begin():
        session.add(game)
    return game.id


def bearer(client: TestClient, email: str) -> dict[str, str]:
    token = client.post("/auth/register",
                        json={"email": email, "password": "password1"}).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def test_guest_cart_roundtrip(client: TestClient, session: Any) -> None:
    game = make_game(session, price="12.50")
    guest = {"X-Session-Id": GUEST}
    assert client.get("/cart", headers=guest).json() == {"items": [], "total": "0.00"}
    put = client.put("/cart/items", json={"game_id": str(game), "quantity": 2}, headers=guest)
    assert put.status_code == 200
    assert put.json()["total"] == "25.00"
    item = put.json()["items"][0]
    assert {k: item[k] for k in ("game_id", "quantity", "name", "price")} == {
        "game_id": str(game), "quantity": 2, "name": "Game", "price": "12.50"}
    assert client.get("/cart", headers=guest).json() == put.json()
    deleted = client.delete(f"/cart/items/{game}", headers=guest)
    assert deleted.status_code == 200 and deleted.json()["items"] == []


def test_user_wishlist_roundtrip(client: TestClient, session: Any) -> None:
    game = make_game(session, in_stock=False)
    user = bearer(client, "w@example.com")
    put = client.put("/wishlist/items", json={"game_id": str(game)}, headers=user)
    assert put.status_code == 200
    assert [(i["game_id"], i["name"], i["price"]) for i in put.json()["items"]] == [
        (str(game), "Game", "10.00")]
    assert client.get("/wishlist", headers=user).json() == put.json()
    assert client.delete(f"/wishlist/items/{game}", headers=user).json() == {"items": []}


@pytest.mark.parametrize("quantity", [0, 11, -3])
def test_quantity_out_of_bounds_is_422(client: TestClient, session: Any, quantity: int) -> None:
    game = make_game(session)
    response = client.put("/cart/items", json={"game_id": str(game), "quantity": quantity},
                          headers={"X-Session-Id": GUEST})
    assert response.status_code == 422


def test_unknown_game_404_unavailable_409(client: TestClient, session: Any) -> None:
    guest = {"X-Session-Id": GUEST}
    unknown = client.put("/cart/items", json={"game_id": str(uuid.uuid4()), "quantity": 1},
                         headers=guest)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "game_not_found"
    for game in (make_game(session, in_stock=False), make_game(session, is_active=False)):
        response = client.put("/cart/items", json={"game_id": str(game), "quantity": 1},
                              headers=guest)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "game_unavailable"
    delisted = make_game(session, is_active=False)
    assert client.put("/wishlist/items", json={"game_id": str(delisted)},
                      headers=guest).status_code == 409


def test_anonymous_reads_are_empty_and_session_ids_validated(client: TestClient,
                                                              redis_client: Any) -> None:
    assert client.get("/cart").json() == {"items": [], "total": "0.00"}
    assert client.get("/wishlist").json() == {"items": []}
    assert redis_client.dbsize() == 0  # nothing cached for nobody
    for bad in ("1", "x" * 21, "has space" + "x" * 20, "glob*" + "x" * 20, "x" * 129):
        for method, path in (("GET", "/wishlist"), ("PUT", "/cart/items")):
            response = client.request(method, path, headers={"X-Session-Id": bad},
                                      json={"game_id": str(uuid.uuid4()), "quantity": 1})
            assert response.status_code == 422, (bad, method)
            assert response.json()["error"]["code"] == "invalid_session_id"
    for good in ("x" * 22, "A.b_c-" * 21 + "xx"):  # 22 and 128 characters
        assert client.get("/cart", headers={"X-Session-Id": good}).status_code == 200
    # A bad token is an error, never a silent fallback to the guest session.
    assert client.get("/cart", headers={"Authorization": "Bearer nope",
                                        "X-Session-Id": GUEST}).status_code == 401


@pytest.mark.parametrize("store", ["cart", "wishlist"])
def test_anonymous_write_gets_a_fresh_unguessable_session(client: TestClient, session: Any,
                                                          store: str) -> None:
    game = make_game(session)
    body: dict[str, Any] = {"game_id": str(game)} | ({"quantity": 2} if store == "cart" else {})
    first = client.put(f"/{store}/items", json=body)
    second = client.put(f"/{store}/items", json=body)
    assert first.status_code == second.status_code == 200
    sids = [first.headers["X-Session-Id"], second.headers["X-Session-Id"]]
    assert sids[0] != sids[1]  # each anonymous writer is its own guest
    for sid in sids:
        assert len(sid) >= 22  # 128 random bits in URL-safe base64
        assert client.get(f"/{store}", headers={"X-Session-Id": sid}).json() == first.json()
    model = CartItem if store == "cart" else WishlistItem
    with session.begin():
        owners = session.scalars(select(model.session_id)).all()
    assert sorted(owners) == sorted(sids)
    assert client.get(f"/{store}").json()["items"] == []  # and nobody else sees them
    # A request that names its session, or a user, is not given another one.
    assert "X-Session-Id" not in client.put(f"/{store}/items", json=body,
                                            headers={"X-Session-Id": sids[0]}).headers
    user = bearer(client, "anon@example.com")
    assert "X-Session-Id" not in client.put(f"/{store}/items", json=body, headers=user).headers
    # An anonymous delete is a write too: a new, empty guest session.
    deleted = client.delete(f"/{store}/items/{game}")
    assert deleted.status_code == 200 and deleted.json()["items"] == []
    assert len(deleted.headers["X-Session-Id"]) >= 22


def test_anonymous_write_refused_stores_nothing_and_sends_no_session(client: TestClient,
                                                                     session: Any) -> None:
    response = client.put("/cart/items", json={"game_id": str(uuid.uuid4()), "quantity": 1})
    assert response.status_code == 404
    assert "X-Session-Id" not in response.headers
    with session.begin():
        assert session.scalar(select(func.count()).select_from(CartItem)) == 0


def test_users_cannot_touch_each_others_carts(client: TestClient, session: Any) -> None:
    game = make_game(session)
    alice, bob = bearer(client, "alice@example.com"), bearer(client, "bob@example.com")
    client.put("/cart/items", json={"game_id": str(game), "quantity": 2}, headers=bob)
    client.put("/wishlist/items", json={"game_id": str(game)}, headers=bob)
    # Alice sees and edits only her own, whatever else she sends.
    assert client.get("/cart", headers={**alice, "X-Session-Id": GUEST}).json()["items"] == []
    client.delete(f"/cart/items/{game}", headers=alice)
    client.delete(f"/wishlist/items/{game}", headers=alice)
    assert client.get("/cart", headers=bob).json()["items"][0]["quantity"] == 2
    assert len(client.get("/wishlist", headers=bob).json()["items"]) == 1


def test_signed_in_user_ignores_session_header(client: TestClient, session: Any) -> None:
    game = make_game(session)
    user = bearer(client, "u@example.com")
    client.put("/cart/items", json={"game_id": str(game), "quantity": 1},
               headers={**user, "X-Session-Id": GUEST})
    assert client.get("/cart", headers={"X-Session-Id": GUEST}).json()["items"] == []
    assert len(client.get("/cart", headers=user).json()["items"]) == 1
