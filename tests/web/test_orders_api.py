"""HTTP: POST/GET /orders (CONTRACT §5)."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from db.models import (
    CartItem,
    G2APurchase,
    G2APurchaseStatus,
    Game,
    Order,
    OrderItem,
    OrderStatus,
    Transaction,
    TransactionType,
)
from services.accounts import tokens
from services.cache import keys as cache_keys
from services.orders import status as order_status
from tests.order_helpers import balance, make_game, make_user


def _auth(resources: Any, user_id: uuid.UUID) -> dict[str, str]:
    token = tokens.issue(user_id, resources.settings.jwt_secret.get_secret_value(), 3600)
    return {"Authorization": f"Bearer {token}"}


def test_create_from_items_returns_the_order(resources: Any, client: TestClient) -> None:
    user_id = make_user(resources.sessions, "30.00")
    game = make_game(resources.sessions, price="12.50")
    r = client.post("/orders", json={"items": [{"game_id": str(game), "quantity": 2}]},
                    headers=_auth(resources, user_id))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "PENDING" and body["total"] == "25.00"
    assert body["items"] == [
        {"game_id": str(game), "quantity": 2, "unit_price": "12.50", "delivered": 0}]
    assert body["refunded"] == "0.00"
    assert "keys" not in body and "created_at" in body
    assert balance(resources.sessions, user_id) == Decimal("5.00")
    got = client.get(f"/orders/{body['id']}", headers=_auth(resources, user_id))
    assert got.status_code == 200 and got.json()["id"] == body["id"]
    listing = client.get("/orders", headers=_auth(resources, user_id)).json()
    assert listing["total"] == 1 and listing["items"][0]["id"] == body["id"]


def test_create_from_cart(resources: Any, client: TestClient) -> None:
    user_id = make_user(resources.sessions, "30.00")
    game = make_game(resources.sessions, price="3.00")
    with resources.sessions() as s, s.begin():
        s.add(CartItem(user_id=user_id, game_id=game, quantity=2))
    r = client.post("/orders", headers=_auth(resources, user_id))
    assert r.status_code == 201, r.text
    assert r.json()["total"] == "6.00"
    assert client.post("/orders", headers=_auth(resources, user_id)).status_code == 422


def test_refusals(resources: Any, client: TestClient) -> None:
    user_id = make_user(resources.sessions, "5.00")
    pricey = make_game(resources.sessions, price="12.50")
    gone = make_game(resources.sessions, in_stock=False)
    auth = _auth(resources, user_id)
    r = client.post("/orders", json={"items": [{"game_id": str(pricey), "quantity": 1}]},
                    headers=auth)
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_balance"
    r = client.post("/orders", json={"items": [{"game_id": str(gone), "quantity": 1}]},
                    headers=auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "game_unavailable"
    r = client.post("/orders", json={"items": [{"game_id": str(gone), "quantity": 0}]},
                    headers=auth)
    assert r.status_code == 422
    assert client.post("/orders", json={"items": []}, headers={}).status_code == 401
    assert client.get("/orders").status_code == 401
    assert balance(resources.sessions, user_id) == Decimal("5.00")


def test_other_users_order_is_404(resources: Any, client: TestClient) -> None:
    owner, other = make_user(resources.sessions, "30.00"), make_user(resources.sessions)
    game = make_game(resources.sessions, price="1.00")
    order = client.post("/orders", json={"items": [{"game_id": str(game)}]},
                        headers=_auth(resources, owner)).json()
    r = client.get(f"/orders/{order['id']}", headers=_auth(resources, other))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.get(f"/orders/{uuid.uuid4()}", headers=_auth(resources, owner)
                      ).status_code == 404


def test_keys_are_shown_decrypted_only_when_completed(resources: Any, client: TestClient
                                                      ) -> None:
    user_id = make_user(resources.sessions, "30.00")
    game = make_game(resources.sessions, price="1.00")
    auth = _auth(resources, user_id)
    order = client.post("/orders", json={"items": [{"game_id": str(game), "quantity": 2}]},
                        headers=auth).json()
    order_id = uuid.UUID(order["id"])
    fernet = Fernet(resources.settings.key_encryption_key.get_secret_value().encode())
    with resources.sessions() as s, s.begin():
        order_status.apply(s, order_id, OrderStatus.PROCESSING, source="test")
        item_id = s.scalars(select(OrderItem.id).where(OrderItem.order_id == order_id)).one()
        for unit, key in enumerate(["AAAAA-11111", "BBBBB-22222"]):
            s.add(G2APurchase(order_item_id=item_id, unit_index=unit, g2a_order_id=f"x{unit}",
                              transaction_id=f"tx{unit}", status=G2APurchaseStatus.DELIVERED,
                              key_encrypted=fernet.encrypt(key.encode())))
    processing = client.get(f"/orders/{order_id}", headers=auth)
    assert processing.status_code == 200 and processing.json()["status"] == "PROCESSING"
    assert "keys" not in processing.json()
    with resources.sessions() as s, s.begin():
        transition = order_status.apply(s, order_id, OrderStatus.COMPLETED, source="test")
    assert transition is not None and transition.changed
    resources.cache.invalidate(transition.cache_keys)
    body = client.get(f"/orders/{order_id}", headers=auth).json()
    assert body["status"] == "COMPLETED" and body["keys"] == ["AAAAA-11111", "BBBBB-22222"]
    # the cached copy holds ciphertext only (and there is one: the read above filled it)
    cached = resources.cache.get(cache_keys.order(order_id))
    assert cached is not None, "the completed order's view was not cached"
    assert [fernet.decrypt(token.encode()).decode() for token in cached["keys_encrypted"]] == [
        "AAAAA-11111", "BBBBB-22222"]
    assert "keys" not in cached
    serialized = json.dumps(cached)
    assert "AAAAA-11111" not in serialized and "BBBBB-22222" not in serialized
    assert client.get("/orders", headers=auth).json()["items"][0]["keys"] == [
        "AAAAA-11111", "BBBBB-22222"]


# --- issue 16: check before buying (CONTRACT §5) ------------------------------------------


def _written(resources: Any) -> tuple[int, int]:
    """Orders and transactions other than top-ups: both unchanged by a refused order."""
    with resources.sessions() as s:
        return (int(s.scalar(select(func.count()).select_from(Order)) or 0),
                int(s.scalar(select(func.count()).select_from(Transaction)
                             .where(Transaction.type != TransactionType.TOP_UP)) or 0))


def test_more_than_g2a_lists_is_409_insufficient_stock(resources: Any, client: TestClient
                                                       ) -> None:
    """Issue 16 reproduction 1: G2A lists 7, the customer orders 10. Formerly 7 keys were
    bought at G2A and the whole order refunded; now nothing is written."""
    user_id = make_user(resources.sessions, "200.00")
    game = make_game(resources.sessions, price="2.04", g2a_qty=7)
    auth = _auth(resources, user_id)
    r = client.post("/orders", json={"items": [{"game_id": str(game), "quantity": 10}]},
                    headers=auth)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "insufficient_stock" and "7 available" in error["message"]
    assert (error["game_id"], error["requested"], error["available"]) == (str(game), "10", "7")
    assert _written(resources) == (0, 0)
    assert balance(resources.sessions, user_id) == Decimal("200.00")
    # the cart path is checked the same way
    with resources.sessions() as s, s.begin():
        s.add(CartItem(user_id=user_id, game_id=game, quantity=8))
    r = client.post("/orders", headers=auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "insufficient_stock"
    assert _written(resources) == (0, 0)
    r = client.post("/orders", json={"items": [{"game_id": str(game), "quantity": 7}]},
                    headers=auth)
    assert r.status_code == 201 and r.json()["total"] == "14.28"


def test_duplicate_lines_are_merged_and_capped_at_10(resources: Any, client: TestClient) -> None:
    """Issue 16 reproduction 3: 100 lines of the same game x 100 each was a 201 for 10,000
    units. Lines are added up per game, and the sum is capped like a cart line (1..10)."""
    user_id = make_user(resources.sessions, "1000.00")
    game = make_game(resources.sessions, price="1.00", g2a_qty=500)
    auth = _auth(resources, user_id)
    r = client.post("/orders", json={"items": [{"game_id": str(game), "quantity": 100}] * 100},
                    headers=auth)
    assert r.status_code == 422  # a line above 10 is refused before anything is added up
    r = client.post("/orders", json={"items": [{"game_id": str(game), "quantity": 10}] * 100},
                    headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_quantity"
    assert "at most 10 units per game" in r.json()["error"]["message"]
    r = client.post("/orders", json={"items": [{"game_id": str(game), "quantity": 6},
                                               {"game_id": str(game), "quantity": 5}]},
                    headers=auth)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_quantity"
    assert _written(resources) == (0, 0)
    r = client.post("/orders", json={"items": [{"game_id": str(game), "quantity": q}
                                               for q in (2, 3, 1)]}, headers=auth)
    assert r.status_code == 201, r.text
    body = r.json()
    assert [(i["quantity"], i["unit_price"]) for i in body["items"]] == [(6, "1.00")]
    assert body["total"] == "6.00"
    assert balance(resources.sessions, user_id) == Decimal("994.00")


def test_expected_total_pins_the_price(resources: Any, client: TestClient) -> None:
    user_id = make_user(resources.sessions, "100.00")
    a = make_game(resources.sessions, price="10.00")
    b = make_game(resources.sessions, price="2.50")
    auth = _auth(resources, user_id)
    with resources.sessions() as s, s.begin():
        s.add_all([CartItem(user_id=user_id, game_id=a, quantity=2),
                   CartItem(user_id=user_id, game_id=b, quantity=1)])
    # the customer saw 22.50; a sync has since moved a's price
    with resources.sessions() as s, s.begin():
        s.execute(update(Game).where(Game.id == a).values(price=Decimal("10.40")))
    r = client.post("/orders", json={"expected_total": "22.50"}, headers=auth)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "price_changed" and error["current_total"] == "23.30"
    assert error["expected_total"] == "22.50" and "23.30" in error["message"]
    assert _written(resources) == (0, 0)
    assert balance(resources.sessions, user_id) == Decimal("100.00")
    assert client.get("/cart", headers=auth).json()["total"] == "23.30"  # the cart is kept
    for bad in ("1.234", "-1", "abc"):
        r = client.post("/orders", json={"expected_total": bad}, headers=auth)
        assert r.status_code == 422, bad
    # a JSON number works as well as a string
    r = client.post("/orders", json={"expected_total": 23.3}, headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["total"] == "23.30"
    assert balance(resources.sessions, user_id) == Decimal("76.70")
    # with explicit items, and the price pin checked before the balance
    r = client.post("/orders", json={"items": [{"game_id": str(a), "quantity": 10}],
                                     "expected_total": "100.00"}, headers=auth)
    assert r.status_code == 409 and r.json()["error"]["current_total"] == "104.00"
    r = client.post("/orders", json={"items": [{"game_id": str(a), "quantity": 10}],
                                     "expected_total": "104.00"}, headers=auth)
    assert r.status_code == 402
