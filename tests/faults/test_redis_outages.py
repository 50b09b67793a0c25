"""Redis (cache, locks, broker) stopped and started again during a sync, during webhook
processing and during logins.

Each test runs against a Redis of its own (append-only, so what was in it survives the
restart, as in production) used as cache, lock store and broker; workers are `keysync
worker` processes pointed at it. After recovery the scheduled housekeeping is run as the
scheduler would run it (cache-outbox replay, webhook sweep, job-outbox relay), then the
invariant checker compares every cached entry left in Redis with Postgres.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.models import CartItem, Game, Order, OrderStatus, User, WebhookEvent, WishlistItem
from g2a_sim.server import SimServer
from keysync.embedded import EmbeddedRedis
from keysync.resources import Resources
from services import job_outbox
from services.accounts import tokens
from services.cache import Cache, CacheOutbox, make_cache_redis
from services.catalog import Progress, SyncDeps, run_catalog_sync
from services.webhooks import service as webhooks
from tests.faults.support import (
    Figures,
    catalog_differences,
    check_invariants,
    processes,
    redis_env,
    sim_faults,
    sim_g2a_client,
    start_worker,
    wait_until,
)
from tests.order_flows import place_order
from tests.order_helpers import deliver_all, make_game, signed_headers, status_body
from web.app import create_app

# `own_redis`, `own_resources` (a process of ours on it) and `make_resources` (one more
# such process) are the fault suite's fixtures, in tests/faults/conftest.py.


def replay_cache_outbox(resources: Resources, url: str) -> int:
    """What the scheduled `replay_cache_outbox` actor does in a worker that (re)started."""
    return Cache(make_cache_redis(url), CacheOutbox(resources.sessions)).replay_outbox()


def _count(sessions: Any, model: Any, *where: Any) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


# --- during a sync ---------------------------------------------------------------------------


def test_redis_restarted_during_a_sync(
    own_resources: Resources, own_redis: EmbeddedRedis, own_redis_client: redis_lib.Redis,
    figures: Figures,
) -> None:
    res = own_resources
    with SimServer(products=300, seed=5, rate_limit_per_min=0) as sim, \
            httpx.Client(base_url=sim.url, timeout=5.0) as http:
        client = sim_g2a_client(http, sim, res.redis, base_wait_s=0.01, max_wait_s=0.05)
        # One write batch per page, so games are written (and invalidated) during the outage.
        deps = SyncDeps(sessions=res.sessions, redis=res.redis, cache=res.cache, client=client,
                        markup_percent=Decimal("2"), concurrency=1, batch_size=20)
        assert run_catalog_sync(deps, full=True).status == "succeeded"

        app = TestClient(create_app(res))
        with res.sessions() as s:
            game_ids = list(s.scalars(select(Game.id).order_by(Game.g2a_product_id)))
        for game_id in game_ids:  # every game cached before the prices move
            assert app.get(f"/games/{game_id}").status_code == 200
        assert app.get("/games?page=1").status_code == 200
        figures.requests += len(game_ids) + 1
        httpx.post(sim.url + "/_sim/mutate", json={"changed": 80, "out_of_stock": 20})

        # The sync pauses itself at page 3 until Redis is down and at page 9 until it is
        # back: the outage window is exact, whatever the machine's speed.
        down, back = threading.Event(), threading.Event()

        def on_progress(progress: Progress) -> None:
            if progress.pages_done == 3:
                down.wait(20)
            if progress.pages_done == 9:
                back.wait(20)

        outcome: dict[str, Any] = {}
        sim_faults(sim, rate=1.0, latency_ms=20, paths="/v1/products")
        runner = threading.Thread(target=lambda: outcome.update(
            result=run_catalog_sync(deps, full=True, on_progress=on_progress)))
        runner.start()
        wait_until(lambda: client.requests_made >= 3 + 15, 20, "sync at page 3")
        own_redis.stop()
        figures.faults += 1
        down.set()
        # Reads during the outage fall back to Postgres.
        assert app.get(f"/games/{game_ids[0]}").status_code == 200
        wait_until(lambda: res.cache.degraded, 10, "cache degraded")
        own_redis.start()
        back.set()
        runner.join(60)
        assert not runner.is_alive()
        result = outcome["result"]
        assert result.status == "succeeded", result
        assert result.updated >= 80
        assert catalog_differences(res.sessions, sim) == []
        figures.requests += client.requests_made

    assert replay_cache_outbox(res, own_redis.url) > 0  # invalidations made while it was down
    assert own_redis_client.exists("lock:g2a:sync") == 0  # released after the restart
    report = check_invariants(figures, res.sessions, cache_redis=own_redis_client)
    assert report.ok, report.as_dict()
    assert report.cache_entries_compared > 0  # entries of games the sync did not touch


# --- during webhook processing ---------------------------------------------------------------


def _orders_in_processing(resources: Any, n: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    made = []
    game = make_game(resources.sessions, price="25.00")
    for _ in range(n):
        made.append(place_order(resources, [(game, 1)], funds="100.00",
                                status=OrderStatus.PROCESSING))
    return made


@pytest.mark.slow
def test_redis_restarted_during_webhook_processing(
    resources: Any, own_resources: Resources, make_resources: Callable[[], Resources],
    own_redis: EmbeddedRedis, own_redis_client: redis_lib.Redis, tmp_path: Path,
    figures: Figures,
) -> None:
    res = own_resources
    # Orders made with the suite's resources: their fulfil_order messages go to the
    # suite's broker, where no worker runs; this test is about the webhooks alone.
    made = _orders_in_processing(resources, 30)
    expected: dict[uuid.UUID, OrderStatus] = {}
    events: list[tuple[bytes, dict[str, str]]] = []
    for i, (order_id, _) in enumerate(made):
        final = (OrderStatus.COMPLETED, OrderStatus.FAILED, OrderStatus.CANCELLED)[i % 3]
        if final is OrderStatus.COMPLETED:
            deliver_all(resources, order_id)
        expected[order_id] = final
        for status in ("PROCESSING", final.value):
            body = status_body(status, order_id=order_id)
            events.append((body, signed_headers(body)))
    secret = res.settings.jwt_secret.get_secret_value()
    app = TestClient(create_app(res))

    def send(batch: list[tuple[bytes, dict[str, str]]]) -> list[int]:
        codes = [app.post("/webhooks/g2a", content=b, headers=h).status_code for b, h in batch]
        figures.requests += len(batch)
        return codes

    def read_orders(app: TestClient = app) -> None:  # customers look (fills the cache)
        for order_id, user_id in made:
            auth = {"Authorization": f"Bearer {tokens.issue(user_id, secret, 600)}"}
            assert app.get(f"/orders/{order_id}", headers=auth).status_code == 200
            assert app.get("/orders", headers=auth).status_code == 200
            figures.requests += 2

    with processes() as procs:
        procs.append(start_worker(tmp_path, own_redis_client, redis_env(own_redis)))
        read_orders()
        assert set(send(events[:20])) == {202}
        own_redis.stop()
        figures.faults += 1
        # Stored while the broker is down: still 202, and nothing is lost.
        assert set(send(events[20:40])) == {202}
        read_orders()  # served from Postgres meanwhile
        own_redis.start()
        assert set(send(events[40:])) == {202}
        assert set(send(events[:10])) == {200}  # redeliveries: no second effect
        read_orders()

        def settled() -> bool:
            webhooks.sweep(res.sessions, res.broker, min_age_s=0)  # the scheduled sweeper
            unsettled = WebhookEvent.processed_at.is_(None)
            return _count(res.sessions, WebhookEvent, unsettled) == 0

        wait_until(settled, 60, "every webhook processed", interval_s=0.5)
        assert procs[0].popen.poll() is None, "the worker must survive the outage"

    with res.sessions() as s:
        final = {o.id: o.status for o in s.scalars(select(Order))}
    assert final == expected
    replay_cache_outbox(res, own_redis.url)
    # A web process started after the outage (this one's breaker may still be open).
    read_orders(TestClient(create_app(make_resources())))
    report = check_invariants(figures, res.sessions, cache_redis=own_redis_client)
    assert report.ok, report.as_dict()
    assert report.cache_entries_compared >= 60


# --- during logins ---------------------------------------------------------------------------


@pytest.mark.slow
def test_redis_restarted_during_logins(
    own_resources: Resources, make_resources: Callable[[], Resources], own_redis: EmbeddedRedis,
    own_redis_client: redis_lib.Redis, tmp_path: Path, figures: Figures,
) -> None:
    res = own_resources
    app = TestClient(create_app(res))
    games = [make_game(res.sessions, price=p) for p in ("5.00", "7.50", "12.00")]
    people = []
    for i in range(15):
        email = f"user{i}-{uuid.uuid4().hex[:6]}@example.com"
        registered = app.post("/auth/register", json={"email": email, "password": "password1"})
        assert registered.status_code == 201, registered.text
        auth = {"Authorization": f"Bearer {registered.json()['token']}"}
        guest = {"X-Session-Id": f"guest-{uuid.uuid4().hex}"}
        # The user already has a line for games[0]; the guest adds to it (merge).
        assert app.put("/cart/items", json={"game_id": str(games[0]), "quantity": 1},
                       headers=auth).status_code == 200
        for game, quantity in ((games[0], 2), (games[1], 3)):
            assert app.put("/cart/items", json={"game_id": str(game), "quantity": quantity},
                           headers=guest).status_code == 200
        assert app.put("/wishlist/items", json={"game_id": str(games[2])},
                       headers=guest).status_code == 200
        for headers in (auth, guest):  # both views cached before the login
            assert app.get("/cart", headers=headers).status_code == 200
            assert app.get("/wishlist", headers=headers).status_code == 200
        people.append((email, auth, guest))
        figures.requests += 9

    def login(email: str, guest: dict[str, str]) -> str:
        response = app.post("/auth/login", json={"email": email, "password": "password1"},
                            headers=guest)
        figures.requests += 1
        assert response.status_code == 200, response.text
        return str(response.json()["migration"])

    with processes() as procs:
        procs.append(start_worker(tmp_path, own_redis_client, redis_env(own_redis)))
        modes = [login(email, guest) for email, _, guest in people[:5]]
        own_redis.stop()
        figures.faults += 1
        modes += [login(email, guest) for email, _, guest in people[5:10]]
        own_redis.start()
        modes += [login(email, guest) for email, _, guest in people[10:]]
        # Queued while the broker was up, run inline while it was down.
        assert modes == ["queued"] * 5 + ["done"] * 5 + ["queued"] * 5

        guest_rows = CartItem.session_id.is_not(None)
        wait_until(lambda: _count(res.sessions, CartItem, guest_rows) == 0, 30,
                   "every guest cart migrated")
        job_outbox.relay(res.sessions, res.broker, min_age_s=0)  # welcome emails left over
    assert _count(res.sessions, WishlistItem, WishlistItem.session_id.is_not(None)) == 0
    with res.sessions() as s:
        lines = s.execute(select(CartItem.game_id, CartItem.quantity)).all()
        users = s.scalar(select(func.count()).select_from(User))
    assert users == 15
    assert sorted(lines) == sorted([(games[0], 3), (games[1], 3)] * 15)

    replay_cache_outbox(res, own_redis.url)
    # What each user sees now, through a web process started after the outage.
    app = TestClient(create_app(make_resources()))
    for _, auth, guest in people:
        cart = app.get("/cart", headers=auth).json()
        assert {(i["game_id"], i["quantity"]) for i in cart["items"]} == {
            (str(games[0]), 3), (str(games[1]), 3)}
        assert [i["game_id"] for i in app.get("/wishlist", headers=auth).json()["items"]] == [
            str(games[2])]
        assert app.get("/cart", headers=guest).json()["items"] == []
        figures.requests += 3
    report = check_invariants(figures, res.sessions, cache_redis=own_redis_client)
    assert report.ok, report.as_dict()
    assert report.cache_entries_compared >= 45


def test_a_sync_that_ends_while_redis_is_down_still_reports_its_result(
    own_resources: Resources, own_redis: EmbeddedRedis, own_redis_client: redis_lib.Redis,
    figures: Figures,
) -> None:
    """Redis goes down mid-run and stays down: the listing and the Postgres writes finish,
    and so must the run: its result, not a Redis error from releasing the lock."""
    res = own_resources
    with SimServer(products=100, seed=6, rate_limit_per_min=0) as sim, \
            httpx.Client(base_url=sim.url, timeout=5.0) as http:
        client = sim_g2a_client(http, sim, res.redis)
        deps = SyncDeps(sessions=res.sessions, redis=res.redis, cache=res.cache, client=client,
                        markup_percent=Decimal("2"), concurrency=1, batch_size=20)
        down = threading.Event()

        def on_progress(progress: Progress) -> None:
            if progress.pages_done == 2:
                down.wait(20)

        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = run_catalog_sync(deps, full=True, on_progress=on_progress)
            except Exception as exc:
                outcome["error"] = repr(exc)

        runner = threading.Thread(target=run)
        runner.start()
        wait_until(lambda: client.requests_made >= 2, 20, "sync at page 2")
        own_redis.stop()
        figures.faults += 1
        down.set()
        runner.join(60)
        figures.requests += client.requests_made
        assert "error" not in outcome, outcome["error"]
        assert outcome["result"].status == "succeeded"
        assert catalog_differences(res.sessions, sim) == []
    own_redis.start()
    assert replay_cache_outbox(res, own_redis.url) > 0
    report = check_invariants(figures, res.sessions, cache_redis=own_redis_client)
    assert report.ok, report.as_dict()
