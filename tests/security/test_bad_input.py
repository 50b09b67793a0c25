"""Regressions the fuzz suite found: NUL characters, which Postgres text and jsonb cannot
hold, reached the database and answered 500 (a webhook sender retries a 500 forever)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.models import User, WebhookEvent
from tests.order_helpers import signed_headers
from web.app import create_app


@pytest.fixture
def client(resources: Any) -> TestClient:
    return TestClient(create_app(resources))


@pytest.mark.parametrize(("method", "path", "body"), [
    ("post", "/auth/login", {"email": "\x00", "password": "password1"}),
    ("get", "/games?search=%00", None),
])
def test_nul_in_a_lookup_is_422_not_500(
    client: TestClient, method: str, path: str, body: Any,
) -> None:
    # These only read: what the NUL used to break is the answer (a 500 from Postgres).
    response = client.request(method.upper(), path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize(("body", "without_nul"), [
    ({"email": "a\x00@example.com", "password": "password1"},
     {"email": "a@example.com", "password": "password1"}),
    ({"email": "b@example.com", "password": "password1", "name": "x\x00"},
     {"email": "b@example.com", "password": "password1", "name": "x"}),
])
def test_nul_in_a_registration_is_422_and_creates_no_user(
    client: TestClient, resources: Any, body: dict[str, str], without_nul: dict[str, str],
) -> None:
    response = client.post("/auth/register", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert _users(resources) == []
    # The same registration without the NUL creates the user: the 422 above was the NUL
    # alone, and the empty table is the absence of a user this request would have made.
    created = client.post("/auth/register", json=without_nul)
    assert created.status_code == 201, created.text
    assert _users(resources) == [without_nul["email"]]


def _users(resources: Any) -> list[str]:
    with resources.sessions() as s:
        return list(s.scalars(select(User.email)))


@pytest.mark.parametrize("data", [
    {"order_id": str(uuid.uuid4()), "status": "FAILED", "occurred_at": "2026-01-01\u0000"},
    {"external_order_id": "g2a\u0000", "status": "FAILED", "occurred_at": "2026-01-01"},
])
def test_signed_webhook_with_nul_is_400_not_retried_forever(
    client: TestClient, resources: Any, data: dict[str, Any],
) -> None:
    body = json.dumps({"type": "order.status_changed", "data": data}).encode()
    response = client.post("/webhooks/g2a", content=body, headers=signed_headers(body))
    assert response.status_code == 400, response.text
    with resources.sessions() as s:
        assert s.scalar(select(func.count()).select_from(WebhookEvent)) == 0
