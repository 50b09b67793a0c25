"""The cache invariant itself: it finds a stale entry of every family it covers, passes on a
healthy cache, and carts/wishlists follow a catalog price change."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from db.models import Game, Order, OrderStatus
from g2a_sim.server import SimServer
from services.accounts import tokens
from services.catalog import SyncDeps, run_catalog_sync
from services.g2a import G2AClient
from services.ops import invariants
from tests.faults.support import Figures, check_invariants
from tests.order_helpers import make_game, make_user
from web.app import create_app


def _setup(resources: Any) -> tuple[TestClient, dict[str, str], dict[str, str], uuid.UUID,
                                    uuid.UUID]:
    app = TestClient(create_app(resources))
    game = make_game(resources.sessions, price="10.00")
    user_id = make_user(resources.sessions, "50.00")
    secret = resources.settings.jwt_secret.get_secret_value()
    auth = {"Authorization": f"Bearer {tokens.issue(user_id, secret, 600)}"}
    guest = {"X-Session-Id": "guest-one-0123456789abcdef"}
    order = app.post("/orders", json={"items": [{"game_id": str(game), "quantity": 1}]},
                     headers=auth).json()
    for headers in (auth, guest):
        assert app.put("/cart/items", json={"game_id": str(game), "quantity": 2},
                       headers=headers).status_code == 200
        assert app.put("/wishlist/items", json={"game_id": str(game)},
                       headers=headers).status_code == 200
        app.get("/cart", headers=headers)
        app.get("/wishlist", headers=headers)
    app.get(f"/orders/{order['id']}", headers=auth)
    app.get("/orders", headers=auth)
    app.get(f"/games/{game}")
    return app, auth, guest, game, uuid.UUID(order["id"])


def _stale_keys(resources: Any, redis_client: Any) -> list[str]:
    with resources.sessions() as s:
        report = invariants.check(s, cache_redis=redis_client)
    return sorted(v["key"] for v in report.violations[invariants.CACHE_CHECK])


def test_healthy_cache_passes_and_every_family_is_compared(
    resources: Any, redis_client: Any, figures: Figures,
) -> None:
    _setup(resources)
    report = check_invariants(figures, resources.sessions, cache_redis=redis_client)
    assert report.ok, report.as_dict()
    # game, user cart + wishlist + orders, session cart + wishlist, order
    assert report.cache_entries_compared == 7


def test_each_kind_of_stale_entry_is_found(resources: Any, redis_client: Any) -> None:
    _, _, _, game, order_id = _setup(resources)
    user = next(k.decode() for k in redis_client.scan_iter("user:*:cart"))
    # Change Postgres behind the cache's back: a write path that forgot to invalidate.
    with resources.sessions() as s, s.begin():
        s.execute(update(Game).where(Game.id == game).values(name="Renamed"))
        s.execute(update(Order).where(Order.id == order_id).values(status=OrderStatus.FAILED))
    stale = _stale_keys(resources, redis_client)
    user_id = user.split(":")[1]
    assert stale == sorted([
        f"game:{game}", f"order:{order_id}", f"user:{user_id}:cart",
        f"user:{user_id}:orders", f"user:{user_id}:wishlist",
        "session:guest-one-0123456789abcdef:cart", "session:guest-one-0123456789abcdef:wishlist",
    ])


def test_entry_of_a_deleted_row_and_pending_outbox_are_found(
    resources: Any, redis_client: Any,
) -> None:
    ghost = uuid.uuid4()
    redis_client.set(f"game:{ghost}", json.dumps({"id": str(ghost)}))
    with resources.sessions() as s, s.begin():
        s.execute(invariants.text(
            "INSERT INTO cache_invalidations (target, is_pattern) VALUES ('game:x', false)"))
    assert _stale_keys(resources, redis_client) == ["cache_invalidations", f"game:{ghost}"]


def test_unreachable_redis_is_skipped_not_passed(resources: Any, dead_redis_url: str) -> None:
    import redis as redis_lib

    with resources.sessions() as s:
        report = invariants.check(s, cache_redis=redis_lib.Redis.from_url(dead_redis_url))
    assert invariants.CACHE_CHECK in report.skipped
    assert invariants.CACHE_CHECK not in report.checked


def test_cached_cart_and_wishlist_follow_a_catalog_price_change(
    resources: Any, redis_client: Any, sim: SimServer,
) -> None:
    with httpx.Client(base_url=sim.url, timeout=5) as http:
        deps = SyncDeps(sessions=resources.sessions, redis=resources.redis,
                        cache=resources.cache, markup_percent=Decimal("2"),
                        client=G2AClient(http, email=sim.config.email,
                                         api_hash=sim.config.api_hash,
                                         api_secret=sim.config.api_secret))
        assert run_catalog_sync(deps, full=True).status == "succeeded"
        with resources.sessions() as s:
            game = s.scalars(select(Game.id).where(Game.in_stock.is_(True)).limit(1)).one()
        app = TestClient(create_app(resources))
        guest = {"X-Session-Id": "guest-two-0123456789abcdef"}
        app.put("/cart/items", json={"game_id": str(game), "quantity": 1}, headers=guest)
        app.put("/wishlist/items", json={"game_id": str(game)}, headers=guest)
        assert app.get("/cart", headers=guest).status_code == 200
        assert app.get("/wishlist", headers=guest).status_code == 200
        httpx.post(sim.url + "/_sim/mutate", json={"changed": 200})  # every price moves
        assert run_catalog_sync(deps, full=True).updated == 200
    assert _stale_keys(resources, redis_client) == []


def test_keysync_check_cli_compares_the_cache_and_exits_1_on_a_stale_entry(
    resources: Any, redis_client: Any,
) -> None:
    import subprocess

    from tests.faults.support import KEYSYNC

    _, _, _, game, _ = _setup(resources)

    def run(*args: str) -> tuple[int, dict[str, Any]]:
        done = subprocess.run([KEYSYNC, "check", "--json", *args], capture_output=True,
                              text=True, timeout=60)
        return done.returncode, json.loads(done.stdout)

    code, report = run()
    assert code == 0 and report["ok"] and report["cache_entries_compared"] == 7
    with resources.sessions() as s, s.begin():
        s.execute(update(Game).where(Game.id == game).values(price=Decimal("99.00")))
    code, report = run()
    assert code == 1
    assert {v["key"] for v in report["violations"][invariants.CACHE_CHECK]} >= {f"game:{game}"}
    code, report = run("--no-cache")
    assert code == 0 and invariants.CACHE_CHECK not in report["checked"]
