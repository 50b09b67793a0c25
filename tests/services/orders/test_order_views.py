"""The typed order and webhook views answer exactly the bytes the hand-built dicts did.

The expected bodies are built here the way the services built them before the pydantic
schemas (str() of ids and money, `datetime.isoformat()`, keys only when COMPLETED, dict
order = JSON key order) and rendered the way Starlette's JSONResponse renders, so a change
of field order, money or timestamp format, a `null` where a field used to be absent, or a
different error body shows up as a byte difference.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import select

from db.models import G2APurchase, Order, OrderItem, OrderStatus
from keysync.resources import Resources
from services.cache import keys as cache_keys
from services.orders.schemas import CachedOrder
from tests.order_flows import bearer, place_order
from tests.order_helpers import deliver_all, make_game, make_user, signed_headers, status_body
from web.app import create_app


@pytest.fixture
def client(resources: Resources) -> Iterator[TestClient]:
    with TestClient(create_app(resources)) as c:
        yield c


def _wire(value: object) -> bytes:
    """What Starlette's JSONResponse sends for `value`."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=None,
                      separators=(",", ":")).encode()


def _legacy_view(resources: Resources, order_id: uuid.UUID, *, keys: bool) -> dict[str, object]:
    """The order as the services built it by hand before the schemas, plus issue 16's
    `refunded` (after `total`) and each line's `delivered` (last)."""
    with resources.sessions() as s:
        order = s.get(Order, order_id)
        assert order is not None
        view: dict[str, object] = {
            "id": str(order.id),
            "user_id": str(order.user_id),
            "status": order.status.value,
            "total": str(order.total),
            "refunded": "0.00",
            "items": [
                {"game_id": str(i.game_id), "quantity": i.quantity,
                 "unit_price": str(i.unit_price),
                 "delivered": i.quantity if order.status is OrderStatus.COMPLETED else 0}
                for i in s.scalars(select(OrderItem).where(OrderItem.order_id == order_id)
                                   .order_by(OrderItem.id))
            ],
            "created_at": order.created_at.isoformat(),
            "updated_at": order.updated_at.isoformat(),
        }
        if keys and order.status is OrderStatus.COMPLETED:
            fernet = Fernet(resources.settings.key_encryption_key.get_secret_value().encode())
            tokens_ = s.scalars(
                select(G2APurchase.key_encrypted)
                .join(OrderItem, OrderItem.id == G2APurchase.order_item_id)
                .where(OrderItem.order_id == order_id)
                .order_by(OrderItem.id, G2APurchase.unit_index))
            view["keys"] = [fernet.decrypt(t).decode() for t in tokens_ if t is not None]
        return view


def test_order_answers_are_the_legacy_bytes(resources: Resources, client: TestClient) -> None:
    user_id = make_user(resources.sessions, "100.00")
    a = make_game(resources.sessions, price="12.50")
    b = make_game(resources.sessions, price="0.99")
    created = client.post(
        "/orders", headers=bearer(resources, user_id),
        json={"items": [{"game_id": str(a), "quantity": 2}, {"game_id": str(b)}]})
    assert created.status_code == 201
    order_id = uuid.UUID(created.json()["id"])
    pending = _legacy_view(resources, order_id, keys=False)
    assert created.content == _wire(pending)
    assert "keys" not in created.json()  # absent, never null

    # read through the cache (miss, then hit) and in the list
    for _ in range(2):
        got = client.get(f"/orders/{order_id}", headers=bearer(resources, user_id))
        assert got.content == _wire(pending)
    listing = client.get("/orders", headers=bearer(resources, user_id))
    assert listing.content == _wire({"items": [pending], "page": 1, "total": 1})

    deliver_all(resources, order_id)
    with resources.sessions() as s, s.begin():
        order = s.get(Order, order_id)
        assert order is not None
        order.status = OrderStatus.COMPLETED
    resources.cache.invalidate([cache_keys.order(order_id), cache_keys.user_orders(user_id)])
    completed = _legacy_view(resources, order_id, keys=True)
    assert completed["keys"] == ["K-1", "K-1", "K-1"]
    for _ in range(2):
        got = client.get(f"/orders/{order_id}", headers=bearer(resources, user_id))
        assert got.content == _wire(completed)
    listing = client.get("/orders", headers=bearer(resources, user_id))
    assert listing.content == _wire({"items": [completed], "page": 1, "total": 1})
    # the cache holds ciphertext only, in the shape the cache always held
    cached = resources.cache.get(cache_keys.order(order_id))
    assert isinstance(cached, dict) and "keys" not in cached
    assert list(cached) == [*list(pending), "keys_encrypted"]
    assert CachedOrder.model_validate(cached).to_cache() == cached


def _error(code: str, message: str) -> bytes:
    return _wire({"error": {"code": code, "message": message}})


def test_order_refusals_keep_their_status_code_and_body(
    resources: Resources, client: TestClient
) -> None:
    poor = make_user(resources.sessions, "1.00")
    game = make_game(resources.sessions, price="5.00")
    gone = make_game(resources.sessions, price="5.00", in_stock=False)

    r = client.post("/orders", headers=bearer(resources, poor),
                    json={"items": [{"game_id": str(game)}]})
    assert (r.status_code, r.content) == (402, _error(
        "insufficient_balance", "balance 1.00 is below the order total 5.00"))
    r = client.post("/orders", headers=bearer(resources, poor))
    assert (r.status_code, r.content) == (422, _error(
        "empty_order", "the order has no items (the cart is empty)"))
    r = client.post("/orders", headers=bearer(resources, poor),
                    json={"items": [{"game_id": str(gone)}]})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "game_unavailable")
    assert str(gone) in r.json()["error"]["message"]
    missing = uuid.uuid4()
    r = client.get(f"/orders/{missing}", headers=bearer(resources, poor))
    assert (r.status_code, r.content) == (404, _error("not_found", "order not found"))
    vanished = uuid.uuid4()  # a valid token whose user does not exist
    r = client.post("/orders", headers=bearer(resources, vanished),
                    json={"items": [{"game_id": str(game)}]})
    assert (r.status_code, r.content) == (404, _error("not_found", "user not found"))


def test_webhook_answers_keep_their_status_code_and_body(
    resources: Resources, client: TestClient
) -> None:
    order_id, _ = place_order(resources, [(make_game(resources.sessions), 1)])
    body = status_body("FAILED", order_id=order_id)
    headers = signed_headers(body)
    msg_id = headers["webhook-id"]
    r = client.post("/webhooks/g2a", content=body, headers=headers)
    assert (r.status_code, r.content) == (202, _wire({"status": "accepted", "webhook_id": msg_id}))
    r = client.post("/webhooks/g2a", content=body, headers=headers)
    assert (r.status_code, r.content) == (200, _wire({"status": "duplicate", "webhook_id": msg_id}))

    refusals = [
        (401, "invalid_signature", "signature does not match", body + b" ", headers),
        (401, "invalid_signature", "missing webhook signature headers", body, {}),
        (400, "invalid_webhook", "webhook-id too long", body,
         signed_headers(body, msg_id="m" * 257)),
        (400, "invalid_timestamp", "webhook-timestamp outside ±300 s", body,
         signed_headers(body, ts=1)),
        (400, "invalid_webhook", "body is not JSON", b"{x", signed_headers(b"{x")),
        (413, "payload_too_large", "webhook body over 256 KiB", b"x" * (256 * 1024 + 1), {}),
    ]
    for status, code, message, content, sent in refusals:
        r = client.post("/webhooks/g2a", content=content, headers=sent)
        assert (r.status_code, r.content) == (status, _error(code, message)), message
