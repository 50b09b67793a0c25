"""A signed webhook nested deeper than 64 levels is 400 and stores nothing (CONTRACT §5):
refused without recursion on untrusted input, never a 500 or a reset connection that the
sender would retry forever."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.models import WebhookEvent
from services.webhooks.intake import MAX_NESTING
from tests.order_helpers import signed_headers
from web.app import create_app


@pytest.fixture
def client(resources: Any) -> TestClient:
    return TestClient(create_app(resources))


def _body(extra_levels: int) -> bytes:
    """A valid event whose `data.extra` holds `extra_levels` nested lists: the top-level
    object is level 1 and `data` level 2, so the document is `2 + extra_levels` deep."""
    data = {"order_id": str(uuid.uuid4()), "status": "FAILED",
            "occurred_at": "2026-01-01T00:00:00Z", "extra": None}
    # Spliced as text: json.dumps itself recurses and could not write the deep cases.
    nested = "[" * extra_levels + '"leaf"' + "]" * extra_levels
    text = json.dumps({"type": "order.status_changed", "data": data})
    return text.replace('"extra": null', f'"extra": {nested}').encode()


def _stored(resources: Any) -> int:
    with resources.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(WebhookEvent)) or 0)


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 400, 1_000, 50_000])
def test_deeper_than_64_levels_is_400_and_stores_nothing(
    client: TestClient, resources: Any, depth: int,
) -> None:
    body = _body(depth - 2)
    response = client.post("/webhooks/g2a", content=body, headers=signed_headers(body))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_webhook"
    assert f"deeper than {MAX_NESTING} levels" in error["message"]
    assert _stored(resources) == 0


def test_exactly_64_levels_is_accepted(client: TestClient, resources: Any) -> None:
    body = _body(MAX_NESTING - 2)
    response = client.post("/webhooks/g2a", content=body, headers=signed_headers(body))
    assert response.status_code == 202, response.text
    assert _stored(resources) == 1
