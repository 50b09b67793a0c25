"""Standard Webhooks signatures over HTTP: only a fresh delivery signed with a configured
secret is stored; both secrets of a rotation are accepted."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.models import WebhookEvent
from tests.order_helpers import TEST_SECRETS, signed_headers, status_body
from web.app import create_app

OTHER_SECRET = "whsec_" + base64.b64encode(b"not-one-of-ours-not-one-of-ours!").decode()


@pytest.fixture
def client(resources: Any) -> TestClient:
    return TestClient(create_app(resources))


def _stored(resources: Any) -> int:
    with resources.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(WebhookEvent)) or 0)


def _body() -> bytes:
    return status_body("FAILED", order_id=uuid.uuid4())


def _with(headers: dict[str, str], **changes: str) -> dict[str, str]:
    return {**headers, **{k.replace("_", "-"): v for k, v in changes.items()}}


def test_every_forgery_is_401_or_400_and_nothing_is_stored(
    client: TestClient, resources: Any, figures: Any,
) -> None:
    body = _body()
    good = signed_headers(body)
    signature = good["webhook-signature"]
    now = int(time.time())
    forged: list[tuple[str, int, bytes, dict[str, str]]] = [
        ("wrong secret", 401, body, signed_headers(body, secret=OTHER_SECRET)),
        ("truncated signature", 401, body, _with(good, webhook_signature=signature[:-6])),
        ("signature without version", 401, body,
         _with(good, webhook_signature=signature.removeprefix("v1,"))),
        ("v2 scheme", 401, body, _with(good, webhook_signature="v2" + signature[2:])),
        ("empty signature", 401, body, _with(good, webhook_signature="")),
        ("not base64", 401, body, _with(good, webhook_signature="v1,!!!")),
        ("body changed after signing", 401, body.replace(b"FAILED", b"CANCELLED"), good),
        ("id swapped (replay under a new id)", 401, body, _with(good, webhook_id="msg_x")),
        ("timestamp swapped", 401, body, _with(good, webhook_timestamp=str(now - 1))),
        # Well outside the ±300 s window: a slow machine must not carry them back inside.
        ("replayed after 6 minutes", 400, body, signed_headers(body, ts=now - 360)),
        ("from 6 minutes in the future", 400, body, signed_headers(body, ts=now + 360)),
        ("signature over another timestamp", 401, body,
         _with(good, webhook_timestamp="soon")),
    ]
    for name, expected, content, headers in forged:
        response = client.post("/webhooks/g2a", content=content, headers=headers)
        figures.requests += 1
        assert response.status_code == expected, (name, response.text)
        assert response.json()["error"]["code"] in ("invalid_signature", "invalid_timestamp")
    figures.faults += len(forged)
    assert _stored(resources) == 0


def test_a_genuine_signature_with_a_bad_timestamp_says_so_only_after_verification(
    client: TestClient, resources: Any,
) -> None:
    body, msg_id = _body(), "msg_" + uuid.uuid4().hex
    headers = {"webhook-id": msg_id, "webhook-timestamp": "soon",
               "webhook-signature": _sign_raw(TEST_SECRETS[0], msg_id, "soon", body),
               "content-type": "application/json"}
    response = client.post("/webhooks/g2a", content=body, headers=headers)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_timestamp"
    assert _stored(resources) == 0


def _sign_raw(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    import hashlib
    import hmac

    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@pytest.mark.parametrize("secret", TEST_SECRETS, ids=["old", "new"])
def test_rotation_accepts_both_configured_secrets(
    client: TestClient, resources: Any, secret: str,
) -> None:
    body = _body()
    response = client.post("/webhooks/g2a", content=body,
                           headers=signed_headers(body, secret=secret))
    assert response.status_code == 202
    assert _stored(resources) == 1


def test_several_signatures_one_valid_is_accepted_none_valid_is_not(
    client: TestClient, resources: Any,
) -> None:
    body = _body()
    good = signed_headers(body)
    stale = signed_headers(body, msg_id=good["webhook-id"], ts=int(good["webhook-timestamp"]),
                           secret=OTHER_SECRET)["webhook-signature"]
    both = _with(good, webhook_signature=f"{stale} {good['webhook-signature']}")
    assert client.post("/webhooks/g2a", content=body, headers=both).status_code == 202
    body2 = _body()
    only_stale = signed_headers(body2, secret=OTHER_SECRET)
    only_stale["webhook-signature"] += " " + only_stale["webhook-signature"]
    assert client.post("/webhooks/g2a", content=body2, headers=only_stale).status_code == 401
    assert _stored(resources) == 1
