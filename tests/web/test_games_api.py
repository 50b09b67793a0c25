"""HTTP: GET /games and /games/{id} through the cache (CONTRACT §5)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import update

from db.models import Game
from services.cache import keys
from tests.order_helpers import make_game


def test_get_game_shape_and_cache(resources: Any, client: TestClient) -> None:
    game_id = make_game(resources.sessions, price="9.99", name="Crimson Empire")
    body = client.get(f"/games/{game_id}").json()
    assert {k: body[k] for k in ("id", "name", "price", "in_stock", "is_active")} == {
        "id": str(game_id), "name": "Crimson Empire", "price": "9.99", "in_stock": True,
        "is_active": True}
    assert {"g2a_product_id", "slug"} <= body.keys()
    with resources.sessions() as s, s.begin():
        s.execute(update(Game).where(Game.id == game_id).values(price="1.00"))
    assert client.get(f"/games/{game_id}").json()["price"] == "9.99"  # served from cache
    resources.cache.invalidate([keys.game(game_id)])  # what the sync does after commit
    assert client.get(f"/games/{game_id}").json()["price"] == "1.00"


def test_missing_game_is_404_and_not_cached(resources: Any, client: TestClient) -> None:
    game_id = uuid.uuid4()
    r = client.get(f"/games/{game_id}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert resources.cache.get(keys.game(game_id)) is None
    assert client.get("/games/not-a-uuid").status_code == 422


def test_list_search_and_pages(resources: Any, client: TestClient) -> None:
    for i in range(25):
        make_game(resources.sessions, name=f"Neon Racing {i:02d}")
    make_game(resources.sessions, name="Silent Odyssey")
    make_game(resources.sessions, name="Neon Hidden", is_active=False)
    first = client.get("/games", params={"search": "neon"}).json()
    assert first["total"] == 25 and first["page"] == 1 and len(first["items"]) == 20
    second = client.get("/games", params={"search": "NEON", "page": 2}).json()
    assert len(second["items"]) == 5 and second["page"] == 2
    assert client.get("/games").json()["total"] == 26
    assert client.get("/games", params={"search": "100%_"}).json()["total"] == 0
    assert client.get("/games", params={"page": 0}).status_code == 422
