"""HTTP auth (T009-T011): register/login shapes, races, login-triggered migration, outages."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.models import CartItem, Game, User
from keysync.embedded import free_port
from keysync.resources import Resources
from services.cache import keys
from tests.services.accounts.support import job_outbox_inserts_fail
from web.app import create_app
from worker.broker import create_broker

GUEST = "guest-0123456789abcdefghij"  # guest session ids are 22-128 characters


def make_game(session: Any, *, in_stock: bool = True, price: str = "10.00") -> uuid.UUID:
    game = Game(g2a_product_id=f"p-{uuid.uuid4().hex[:12]}", slug=f"s-{uuid.uuid4().hex}",
                name="Game", price=Decimal(price), g2a_price=Decimal(price), in_stock=in_stock)
    with session.begin():
        session.add(game)
    return game.id


def register(client: TestClient, email: str = "ana@example.com") -> dict[str, Any]:
    response = client.post("/auth/register",
                           json={"email": email, "password": "password1", "name": "Ana"})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_register_and_login_shapes(client: TestClient) -> None:
    body = register(client)
    assert set(body["user"]) >= {"id", "email", "name", "balance"}
    assert body["user"]["balance"] == "0.00" and body["token"]
    login = client.post("/auth/login", json={"email": "ANA@example.com", "password": "password1"})
    assert login.status_code == 200
    assert login.json()["migration"] == "none"
    assert login.json()["user"] == body["user"]


@pytest.mark.parametrize("payload", [
    {"email": "not-an-email", "password": "password1"},
    {"email": "a@example.com", "password": "short"},
    {"password": "password1"},
])
def test_register_invalid_is_422(client: TestClient, payload: dict[str, Any]) -> None:
    response = client.post("/auth/register", json=payload)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_bad_credentials_are_401_without_saying_which(client: TestClient) -> None:
    register(client)
    wrong = client.post("/auth/login", json={"email": "ana@example.com", "password": "nope"})
    unknown = client.post("/auth/login", json={"email": "x@example.com", "password": "nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def test_concurrent_duplicate_registrations_give_201_and_409(client: TestClient,
                                                             session: Any) -> None:
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def attempt(email: str) -> None:
        barrier.wait()
        statuses.append(client.post("/auth/register",
                                    json={"email": email, "password": "password1"}).status_code)

    threads = [threading.Thread(target=attempt, args=(e,))
               for e in ("dup@example.com", "DUP@Example.com")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(statuses) == [201, 409]
    with session.begin():
        assert session.scalar(select(func.count()).select_from(User)) == 1


def test_register_injected_failure_after_insert_leaves_no_user(resources: Any, engine: Any,
                                                               session: Any) -> None:
    client = TestClient(create_app(resources), raise_server_exceptions=False)
    with job_outbox_inserts_fail(engine):
        response = client.post("/auth/register",
                               json={"email": "atomic@example.com", "password": "password1"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "Traceback" not in response.text and "injected" not in response.text
    with session.begin():
        assert session.scalar(select(func.count()).select_from(User)) == 0


def test_login_queues_migration_and_worker_merges(client: TestClient, session: Any,
                                                  broker: Any, worker_thread: Any,
                                                  redis_client: Any) -> None:
    # T010 with a real worker thread on the real Redis broker.
    user = register(client)
    auth_header = {"Authorization": f"Bearer {user['token']}"}
    guest = {"X-Session-Id": GUEST}
    shared, only_guest = make_game(session), make_game(session, price="2.50")
    client.put("/cart/items", json={"game_id": str(shared), "quantity": 3}, headers=auth_header)
    client.put("/cart/items", json={"game_id": str(shared), "quantity": 9}, headers=guest)
    client.put("/cart/items", json={"game_id": str(only_guest), "quantity": 2}, headers=guest)
    client.put("/wishlist/items", json={"game_id": str(only_guest)}, headers=guest)
    assert client.get("/cart", headers=guest).json()["total"] == "95.00"
    client.get("/wishlist", headers=guest)
    assert redis_client.exists(keys.session_cart(GUEST), keys.session_wishlist(GUEST))

    login = client.post("/auth/login", json={"email": "ana@example.com", "password": "password1"},
                        headers=guest)
    assert login.status_code == 200
    assert login.json()["migration"] == "queued"
    broker.join("default", timeout=20_000)
    worker_thread.join()

    merged = client.get("/cart", headers={"Authorization": f"Bearer {login.json()['token']}"})
    assert {(i["game_id"], i["quantity"]) for i in merged.json()["items"]} == {
        (str(shared), 10), (str(only_guest), 2)}  # 3 + 9 capped at 10
    assert not redis_client.exists(keys.session_cart(GUEST), keys.session_wishlist(GUEST))
    assert client.get("/cart", headers=guest).json() == {"items": [], "total": "0.00"}
    assert [i["game_id"] for i in client.get("/wishlist", headers=auth_header).json()["items"]] \
        == [str(only_guest)]


def test_login_with_broker_down_migrates_inline(settings: Any, session: Any,
                                                dead_redis_url: str) -> None:
    resources = Resources.build(settings, create_broker(dead_redis_url))
    try:
        client = TestClient(create_app(resources))
        register(client)  # the welcome email stays in the outbox; registration succeeds
        game = make_game(session)
        client.put("/cart/items", json={"game_id": str(game), "quantity": 1},
                   headers={"X-Session-Id": GUEST})
        login = client.post("/auth/login",
                            json={"email": "ana@example.com", "password": "password1"},
                            headers={"X-Session-Id": GUEST})
        assert login.status_code == 200
        assert login.json()["migration"] == "done"
        cart = client.get("/cart", headers={"Authorization": f"Bearer {login.json()['token']}"})
        assert [i["game_id"] for i in cart.json()["items"]] == [str(game)]
    finally:
        resources.close()
    with session.begin():
        assert session.scalar(select(func.count()).select_from(CartItem)
                              .where(CartItem.session_id.is_not(None))) == 0


@pytest.mark.parametrize("session_id", ["user:*" + "x" * 20, "1", "x" * 21])
def test_login_rejects_malformed_or_short_session_id(client: TestClient,
                                                     session_id: str) -> None:
    register(client)
    response = client.post("/auth/login",
                           json={"email": "ana@example.com", "password": "password1"},
                           headers={"X-Session-Id": session_id})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_session_id"


def test_register_strips_surrounding_spaces_before_validating(client: TestClient) -> None:
    body = register(client, "  spaced@example.com \t")
    assert body["user"]["email"] == "spaced@example.com"
    login = client.post("/auth/login", json={"email": " Spaced@example.com ",
                                             "password": "password1"})
    assert login.status_code == 200 and login.json()["user"]["id"] == body["user"]["id"]
    again = client.post("/auth/register", json={"email": "spaced@example.com  ",
                                                "password": "password1"})
    assert again.status_code == 409
    inner = client.post("/auth/register", json={"email": " spa ced@example.com ",
                                                "password": "password1"})
    assert inner.status_code == 422  # only the surrounding spaces go


def _login(client: TestClient, email: str, password: str = "wrong-password") -> Any:
    return client.post("/auth/login", json={"email": email, "password": password})


def _client(settings: Any, broker: Any, **overrides: Any) -> tuple[TestClient, Resources]:
    resources = Resources.build(settings.model_copy(update=overrides), broker)
    return TestClient(create_app(resources)), resources


def test_login_rate_limit_per_email_is_429_with_retry_after(settings: Any,
                                                            broker: Any) -> None:
    assert settings.login_rate_per_min == 10  # CONTRACT §3's defaults
    assert settings.login_rate_per_address_per_min == 60
    client, resources = _client(settings, broker, login_rate_per_min=3)
    try:
        register(client)
        statuses = [_login(client, "ana@example.com").status_code for _ in range(3)]
        assert statuses == [401] * 3
        refused = _login(client, "ANA@example.com", "password1")  # even the right password
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 120
        assert refused.json()["error"]["code"] == "rate_limited"
        # Another account is unaffected; an unknown email is limited just the same.
        assert _login(client, "bob@example.com").status_code == 401
        unknown = [_login(client, "nobody@example.com").status_code for _ in range(4)]
        assert unknown == [401] * 3 + [429]
    finally:
        resources.close()


def test_login_rate_limit_per_client_address(settings: Any, broker: Any) -> None:
    client, resources = _client(settings, broker, login_rate_per_address_per_min=3)
    try:
        emails = [f"user{n}@example.com" for n in range(4)]
        statuses = [_login(client, email).status_code for email in emails]
        assert statuses == [401] * 3 + [429]
        assert _login(client, "user0@example.com").headers["Retry-After"]
    finally:
        resources.close()


def test_login_rate_limits_hold_with_redis_down(settings: Any, broker: Any,
                                                dead_redis_url: str) -> None:
    # Cache and limits on a Redis that is not there; the broker is the real one.
    client, resources = _client(settings, broker, redis_url=dead_redis_url,
                                login_rate_per_min=3)
    try:
        register(client)
        statuses = [_login(client, "ana@example.com").status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]  # per process now, never off
        assert _login(client, "ana@example.com", "password1").status_code == 429
        assert _login(client, "bob@example.com").status_code == 401
    finally:
        resources.close()


def test_login_limits_of_zero_are_off(settings: Any, broker: Any) -> None:
    client, resources = _client(settings, broker, login_rate_per_min=0,
                                login_rate_per_address_per_min=0)
    try:
        assert {_login(client, "ana@example.com").status_code for _ in range(12)} == {401}
    finally:
        resources.close()


def test_postgres_unreachable_is_503_with_retry_after(settings: Any, broker: Any) -> None:
    # T011: a port where no Postgres listens.
    down = settings.model_copy(update={
        "database_url": f"postgresql+psycopg://keysync@127.0.0.1:{free_port()}/keysync"})
    resources = Resources.build(down, broker)
    try:
        client = TestClient(create_app(resources), raise_server_exceptions=False)
        for path in ("/auth/register", "/auth/login"):
            response = client.post(path, json={"email": "a@example.com", "password": "password1"})
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"]
            assert response.json()["error"]["code"] == "database_unavailable"
            assert "Traceback" not in response.text
    finally:
        resources.close()


@pytest.mark.parametrize("address, variant", [
    # Python's lower() and Postgres lower() disagree on both: before the fix these addresses
    # registered (201) and then every login answered 401.
    ("ΟΔΥΣΣΕΥΣ@example.com", "οδυσσευσ@EXAMPLE.com"),
    ("İSTANBUL@example.com", "İstanbul@Example.com"),
    ("Mixed.Case@Example.com", "mixed.case@example.COM"),
])
def test_unicode_case_variants_register_once_and_log_in(client: TestClient, session: Any,
                                                        address: str, variant: str) -> None:
    with session.begin():  # the variant really is the same address to Postgres
        assert session.scalar(select(func.lower(variant) == func.lower(address)))
    user = register(client, address)["user"]
    assert user["email"] == address
    for typed in (address, variant):
        login = client.post("/auth/login", json={"email": typed, "password": "password1"})
        assert login.status_code == 200, (typed, login.text)
        assert login.json()["user"]["id"] == user["id"]
    again = client.post("/auth/register", json={"email": variant, "password": "password1"})
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "email_taken"
    with session.begin():
        assert session.scalar(select(func.count()).select_from(User)) == 1
