"""Bearer tokens at the HTTP boundary, and one user never reaching another's data.

`tests/services/accounts/test_tokens.py` covers `services.accounts.tokens`; here every
authenticated endpoint is called with each kind of bad token and must answer 401 and store
nothing (a bad token never falls back to the guest session either).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

from services.accounts import tokens
from services.cart.owner import new_session_id
from tests.conftest import TABLES
from tests.order_helpers import make_game, make_user
from web.app import create_app

GUEST = "guest-0123456789abcdefghij"  # guest session ids are 22-128 characters

ENDPOINTS = [
    ("GET", "/cart", None),
    ("PUT", "/cart/items", {"game_id": "{game}", "quantity": 1}),
    ("DELETE", "/cart/items/{game}", None),
    ("GET", "/wishlist", None),
    ("PUT", "/wishlist/items", {"game_id": "{game}"}),
    ("DELETE", "/wishlist/items/{game}", None),
    ("GET", "/orders", None),
    ("POST", "/orders", {"items": [{"game_id": "{game}", "quantity": 1}]}),
    ("GET", "/orders/{order}", None),
]


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _bad_tokens(user_id: uuid.UUID, secret: str) -> dict[str, str]:
    now = dt.datetime.now(dt.UTC)
    claims = {"sub": str(user_id), "iat": now, "exp": now + dt.timedelta(hours=1)}
    good = tokens.issue(user_id, secret, 3600)
    header, payload, signature = good.split(".")
    other = str(uuid.uuid4())
    return {
        "expired": tokens.issue(user_id, secret, 60, now=now - dt.timedelta(hours=2)),
        "alg none": jwt.encode(claims, None, algorithm="none"),
        "alg none, unsigned, typ JWT": f"{_b64({'alg': 'none', 'typ': 'JWT'})}."
                                       f"{_b64({'sub': str(user_id), 'exp': 9_999_999_999})}.",
        "HS512 with our secret": jwt.encode(claims, secret, algorithm="HS512"),
        "HS256 with another secret": jwt.encode(claims, "x" * 40, algorithm="HS256"),
        "tampered sub": f"{header}.{_b64({'sub': other, 'exp': 9_999_999_999})}.{signature}",
        "truncated signature": f"{header}.{payload}.{signature[:-4]}",
        "no exp": jwt.encode({"sub": str(user_id)}, secret, algorithm="HS256"),
        "sub not a uuid": jwt.encode({**claims, "sub": "admin"}, secret, algorithm="HS256"),
        "garbage": "not.a.token",
    }


def _counts(resources: Any) -> dict[str, int]:
    with resources.engine.connect() as conn:
        return {t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one()
                for t in TABLES}


def _call(client: TestClient, method: str, path: str, body: Any, headers: dict[str, str],
          **ids: Any) -> Any:
    path = path.format(**ids)
    if body is not None:
        body = json.loads(json.dumps(body).replace("{game}", str(ids["game"])))
    return client.request(method, path, json=body, headers=headers)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_every_authenticated_endpoint_refuses_every_bad_token(
    resources: Any, figures: Any,
) -> None:
    client = TestClient(create_app(resources))
    secret = resources.settings.jwt_secret.get_secret_value()
    user_id = make_user(resources.sessions, "50.00")
    game = make_game(resources.sessions)
    auth = {"Authorization": f"Bearer {tokens.issue(user_id, secret, 600)}"}
    order = client.post("/orders", json={"items": [{"game_id": str(game)}]}, headers=auth)
    assert order.status_code == 201
    ids = {"game": game, "order": order.json()["id"]}
    before = _counts(resources)
    schemes = {"missing": {}, "not bearer": {"Authorization": f"Basic {secret}"},
               "empty bearer": {"Authorization": "Bearer "}}
    bad = {name: {"Authorization": f"Bearer {t}"}
           for name, t in _bad_tokens(user_id, secret).items()}
    for method, path, body in ENDPOINTS:
        for name, headers in {**schemes, **bad}.items():
            if name == "missing" and not path.startswith("/orders"):
                continue  # no credentials at all on a cart or wishlist: a guest (below)
            # A guest header must not turn a bad token into a guest request.
            with_guest = {**headers, "X-Session-Id": GUEST} if name != "missing" else {}
            response = _call(client, method, path, body, with_guest, **ids)
            figures.requests += 1
            assert response.status_code == 401, (method, path, name, response.text)
            assert response.json()["error"]["code"] in ("unauthorized", "owner_required")
            assert response.headers.get("www-authenticate") == "Bearer"
    figures.faults += figures.requests
    assert _counts(resources) == before


def test_one_user_cannot_read_or_change_anothers_cart_wishlist_or_orders(
    resources: Any, figures: Any,
) -> None:
    client = TestClient(create_app(resources))
    secret = resources.settings.jwt_secret.get_secret_value()
    alice, bob = make_user(resources.sessions, "50.00"), make_user(resources.sessions, "50.00")
    as_alice = {"Authorization": f"Bearer {tokens.issue(alice, secret, 600)}"}
    as_bob = {"Authorization": f"Bearer {tokens.issue(bob, secret, 600)}"}
    game, other_game = make_game(resources.sessions), make_game(resources.sessions)
    client.put("/cart/items", json={"game_id": str(game), "quantity": 3}, headers=as_bob)
    client.put("/wishlist/items", json={"game_id": str(game)}, headers=as_bob)
    bobs_order = client.post("/orders", json={"items": [{"game_id": str(other_game)}]},
                             headers=as_bob).json()
    bob_sees = {p: client.get(p, headers=as_bob).json() for p in ("/cart", "/wishlist",
                                                                    "/orders")}

    # Alice tries every way to reach Bob's things.
    assert client.get(f"/orders/{bobs_order['id']}", headers=as_alice).status_code == 404
    assert client.get("/orders", headers=as_alice).json()["items"] == []
    assert client.get("/cart", headers=as_alice).json()["items"] == []
    assert client.get("/wishlist", headers=as_alice).json()["items"] == []
    assert client.delete(f"/cart/items/{game}", headers=as_alice).status_code == 200
    assert client.delete(f"/wishlist/items/{game}", headers=as_alice).status_code == 200
    # Buying "from the cart" buys her own (empty) cart, never his.
    empty = client.post("/orders", headers=as_alice)
    assert empty.status_code == 422 and empty.json()["error"]["code"] == "empty_order"
    # A token signed for Bob but naming Alice's session, or a query trying to name Bob:
    assert client.get(f"/cart?user_id={bob}", headers=as_alice).json()["items"] == []
    figures.requests += 12
    assert {p: client.get(p, headers=as_bob).json() for p in bob_sees} == bob_sees


def test_guest_sessions_are_isolated_from_each_other_and_from_users(resources: Any) -> None:
    client = TestClient(create_app(resources))
    game = make_game(resources.sessions)
    one, two = {"X-Session-Id": new_session_id()}, {"X-Session-Id": new_session_id()}
    client.put("/cart/items", json={"game_id": str(game), "quantity": 2}, headers=one)
    assert client.get("/cart", headers=two).json()["items"] == []
    client.delete(f"/cart/items/{game}", headers=two)
    assert client.get("/cart", headers=one).json()["items"][0]["quantity"] == 2
    # Glob characters cannot widen a session to others (ids are validated, keys escaped).
    assert client.get("/cart", headers={"X-Session-Id": "guest-*" + "x" * 20}).status_code \
        == 422
    # Orders need a user: a guest header alone is not enough.
    assert client.get("/orders", headers=one).status_code == 401


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/cart", None),
    ("GET", "/wishlist", None),
    ("GET", "/orders", None),
    ("POST", "/orders", {"items": [{"game_id": "{game}"}]}),
    ("PUT", "/cart/items", {"game_id": "{game}", "quantity": 1}),
    ("PUT", "/wishlist/items", {"game_id": "{game}"}),
])
def test_valid_token_of_a_user_that_no_longer_exists(
    resources: Any, method: str, path: str, body: Any,
) -> None:
    """A well-signed token whose user is gone (a restored database, a secret shared with
    another environment): never a 500, nothing stored."""
    client = TestClient(create_app(resources))
    secret = resources.settings.jwt_secret.get_secret_value()
    ghost = {"Authorization": f"Bearer {tokens.issue(uuid.uuid4(), secret, 600)}"}
    game = make_game(resources.sessions)
    before = _counts(resources)
    response = _call(client, method, path, body, ghost, game=game)
    assert response.status_code < 500, response.text
    if method == "PUT":
        assert response.status_code == 401, response.text
    assert _counts(resources) == before


def test_a_guest_cart_cannot_be_guessed_read_or_taken_over(resources: Any,
                                                           figures: Any) -> None:
    """Issue 16's reproduction: a guest with id `1` carted 3 units; anyone could read that
    cart, and logging in with `X-Session-Id: 1` moved it into the attacker's account."""
    client = TestClient(create_app(resources))
    game = make_game(resources.sessions)
    # Short, guessable ids are refused outright, for guests and at login.
    for short in ("1", "guest", "x" * 21):
        put = client.put("/cart/items", json={"game_id": str(game), "quantity": 3},
                         headers={"X-Session-Id": short})
        assert put.status_code == 422, short
        assert client.get("/cart", headers={"X-Session-Id": short}).status_code == 422
        figures.requests += 2
    # A guest without an id is given an unguessable one.
    victim = client.put("/cart/items", json={"game_id": str(game), "quantity": 3})
    sid = victim.headers["X-Session-Id"]
    assert len(sid) >= 22 and victim.json()["items"][0]["quantity"] == 3
    # The attacker, signed in, tries the ids a guesser would: nothing moves.
    client.post("/auth/register", json={"email": "mallory@example.com", "password": "password1"})
    guesses = [g for g in ("1", "0" * 22, sid[:-1] + ("A" if sid[-1] != "A" else "B"),
                           sid.lower(), sid.upper()) if g != sid]
    for guess in guesses:
        login = client.post("/auth/login", json={"email": "mallory@example.com",
                                                 "password": "password1"},
                            headers={"X-Session-Id": guess})
        assert login.status_code in (200, 422), login.text
        if login.status_code == 200:
            assert login.json()["migration"] == "none"
            token = {"Authorization": f"Bearer {login.json()['token']}"}
            assert client.get("/cart", headers=token).json()["items"] == []
        figures.requests += 1
    assert client.get("/cart", headers={"X-Session-Id": sid}).json() == victim.json()

