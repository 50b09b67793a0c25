"""HTTP: POST /webhooks/g2a (CONTRACT §5) — T025 and T026 end to end."""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from db.models import OrderStatus, WebhookEvent
from keysync.embedded import free_port
from keysync.resources import Resources
from services.accounts import tokens
from services.ops import invariants
from services.orders.fulfilment import FulfilmentOutcome
from services.webhooks import service as webhooks
from tests.helpers import LiveServer, wait_until
from tests.order_flows import fulfiller, order_row, place_order, refunds
from tests.order_helpers import (
    TEST_SECRETS,
    balance,
    deliver_all,
    make_game,
    signed_headers,
    sim_game,
    sim_server,
    status_body,
)
from web.app import create_app


def _order(resources: Any, status: OrderStatus = OrderStatus.PROCESSING
           ) -> tuple[uuid.UUID, uuid.UUID]:
    game = make_game(resources.sessions, price="40.00")
    return place_order(resources, [(game, 1)], funds="100.00", status=status)


def _events(resources: Any) -> int:
    with resources.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(WebhookEvent)) or 0)


def _status(resources: Any, order_id: uuid.UUID) -> OrderStatus:
    return order_row(resources, order_id).status


def _settled(resources: Any) -> bool:
    with resources.sessions() as s:
        return not s.scalar(select(func.count()).select_from(WebhookEvent).where(
            WebhookEvent.processed_at.is_(None)))


def _handled(resources: Any) -> bool:
    """Every event processed and its job finished: the message leaves dramatiq's
    `.msgs` hash only when acknowledged, after the actor returned, so after the cache
    invalidation that follows the commit (`_settled` alone can see the commit first)."""
    pending = resources.broker.client.hvals("dramatiq:default.msgs")
    return _settled(resources) and not any(b'"process_webhook_event"' in m for m in pending)


def test_accepted_then_duplicate(resources: Any, client: TestClient) -> None:
    order_id, _ = _order(resources)
    body = status_body("FAILED", order_id=order_id)
    headers = signed_headers(body)
    before = {o: _metric(o) for o in ("accepted", "duplicate")}
    r = client.post("/webhooks/g2a", content=body, headers=headers)
    assert r.status_code == 202, r.text
    assert client.post("/webhooks/g2a", content=body, headers=headers).status_code == 200
    assert _events(resources) == 1
    assert {o: _metric(o) - v for o, v in before.items()} == {"accepted": 1, "duplicate": 1}


def _body_with_occurred_at(order_id: uuid.UUID, value: object, *, present: bool = True
                           ) -> bytes:
    data: dict[str, object] = {"order_id": str(order_id), "status": "FAILED"}
    if present:
        data["occurred_at"] = value
    return json.dumps({"type": "order.status_changed", "data": data}).encode()


@pytest.mark.parametrize("value, present", [
    (None, False), (None, True), (1767225600, True), (1767225600.5, True), (True, True),
    ("", True), ("not a date", True), ("2026-02-30T00:00:00Z", True),
    ("01/02/2026 10:00", True), (["2026-01-01T00:00:00Z"], True),
], ids=["missing", "null", "int", "float", "bool", "empty", "garbage", "no-such-day",
        "us-format", "list"])
def test_occurred_at_missing_or_not_iso8601_is_400_and_stores_nothing(
    resources: Any, client: TestClient, value: object, present: bool
) -> None:
    order_id, _ = _order(resources)
    body = _body_with_occurred_at(order_id, value, present=present)
    # Checked only after the signature: an unsigned caller learns nothing about the body.
    unsigned = client.post("/webhooks/g2a", content=body,
                           headers={"content-type": "application/json"})
    assert unsigned.status_code == 401
    r = client.post("/webhooks/g2a", content=body, headers=signed_headers(body))
    assert r.status_code == 400, r.text
    assert r.json() == {"error": {"code": "invalid_webhook", "message": r.json()["error"][
        "message"]}}
    assert "occurred_at" in r.json()["error"]["message"]
    assert _events(resources) == 0
    assert _status(resources, order_id) is OrderStatus.PROCESSING
    assert refunds(resources, order_id) == 0


def test_occurred_at_with_offset_or_z_is_accepted(resources: Any, client: TestClient) -> None:
    order_id, _ = _order(resources)
    sent = ["2026-01-01T10:00:00Z", "2026-01-01T12:00:00.5+02:00", "2026-01-01T05:00:00-05:00"]
    for value in sent:
        body = _body_with_occurred_at(order_id, value)
        r = client.post("/webhooks/g2a", content=body, headers=signed_headers(body))
        assert r.status_code == 202, (value, r.text)
    with resources.sessions() as s:
        stored = s.scalars(select(WebhookEvent.payload["data"]["occurred_at"].astext)).all()
    assert sorted(stored) == sorted(sent)  # kept exactly as sent


def _metric(outcome: str) -> float:
    value = REGISTRY.get_sample_value("keysync_webhook_events_total", {"outcome": outcome})
    return value or 0.0


def test_rejections_store_nothing(resources: Any, client: TestClient) -> None:
    order_id, _ = _order(resources)
    body = status_body("FAILED", order_id=order_id)
    cases: list[tuple[int, bytes, dict[str, str]]] = []
    bad_sig = {**signed_headers(body), "webhook-signature": signed_headers(b"other")[
        "webhook-signature"]}
    cases.append((401, body, bad_sig))
    cases.append((401, body, {"content-type": "application/json"}))
    cases.append((400, body, signed_headers(body, ts=int(time.time()) - 600)))
    malformed = b'{"type": "order.status_changed", "data": {'
    cases.append((400, malformed, signed_headers(malformed)))
    unknown = status_body("SHIPPED", order_id=order_id)
    cases.append((400, unknown, signed_headers(unknown)))
    big = b'{"pad": "' + b"x" * (256 * 1024) + b'"}'
    cases.append((413, big, signed_headers(big)))
    for expected, content, headers in cases:
        r = client.post("/webhooks/g2a", content=content, headers=headers)
        assert r.status_code == expected, (expected, r.text)
        assert set(r.json()["error"]) == {"code", "message"}
    # oversized without a Content-Length (chunked): still cut at the cap
    chunks = (b"x" * 65536 for _ in range(5))
    r = client.post("/webhooks/g2a", content=chunks, headers=signed_headers(b"irrelevant"))
    assert r.status_code == 413
    assert _events(resources) == 0
    assert _status(resources, order_id) is OrderStatus.PROCESSING


def test_postgres_down_is_503_with_retry_after(settings: Any, broker: Any) -> None:
    down = settings.model_copy(update={
        "database_url": f"postgresql+psycopg://keysync@127.0.0.1:{free_port()}/keysync"})
    res = Resources.build(down, broker)
    try:
        with TestClient(create_app(res)) as c:
            body = status_body("FAILED", order_id=uuid.uuid4())
            r = c.post("/webhooks/g2a", content=body, headers=signed_headers(body))
            assert r.status_code == 503 and "Retry-After" in r.headers
            assert r.json()["error"]["code"] == "database_unavailable"
    finally:
        res.close()


def test_cached_order_read_after_webhook_shows_new_status(
    resources: Any, client: TestClient, worker_thread: Any
) -> None:
    """T025 over HTTP with a real worker: GET (cached) -> webhook -> GET shows it."""
    order_id, user_id = _order(resources)
    token = tokens.issue(user_id, resources.settings.jwt_secret.get_secret_value(), 3600)
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get(f"/orders/{order_id}", headers=auth).json()["status"] == "PROCESSING"
    assert client.get("/orders", headers=auth).json()["items"][0]["status"] == "PROCESSING"
    body = status_body("cancelled", order_id=order_id)
    assert client.post("/webhooks/g2a", content=body, headers=signed_headers(body)
                       ).status_code == 202
    wait_until(lambda: _handled(resources), 10)
    assert client.get(f"/orders/{order_id}", headers=auth).json()["status"] == "CANCELLED"
    assert client.get("/orders", headers=auth).json()["items"][0]["status"] == "CANCELLED"


def test_same_webhook_100_times_concurrently_has_one_effect(
    resources: Any, worker_thread: Any
) -> None:
    order_id, user_id = _order(resources)
    body = status_body("FAILED", order_id=order_id)
    headers = signed_headers(body)
    with LiveServer(create_app(resources)) as server, httpx.Client(base_url=server.url) as http:
        barrier = threading.Barrier(25)

        def send(i: int) -> int:
            if i < 25:
                barrier.wait()
            return http.post("/webhooks/g2a", content=body, headers=headers).status_code

        with ThreadPoolExecutor(25) as pool:
            codes = list(pool.map(send, range(100)))
    assert codes.count(202) == 1 and codes.count(200) == 99
    wait_until(lambda: _settled(resources), 10)
    assert _events(resources) == 1
    assert _status(resources, order_id) is OrderStatus.FAILED
    assert refunds(resources, order_id) == 1
    assert balance(resources.sessions, user_id) == Decimal("100.00")
    with resources.sessions() as s:
        assert invariants.check(s, webhook_grace=False).ok


def test_out_of_order_and_repeated_failures(resources: Any, client: TestClient,
                                            worker_thread: Any) -> None:
    """COMPLETED then PROCESSING leaves COMPLETED; FAILED delivered twice refunds once."""
    done, _ = _order(resources)
    deliver_all(resources, done)
    failing, user_id = _order(resources)
    for status, order_id in [("COMPLETED", done), ("PROCESSING", done),
                             ("FAILED", failing), ("FAILED", failing)]:
        body = status_body(status, order_id=order_id)
        assert client.post("/webhooks/g2a", content=body, headers=signed_headers(body)
                           ).status_code == 202
        wait_until(lambda: _settled(resources), 10)
    assert _status(resources, done) is OrderStatus.COMPLETED
    assert _status(resources, failing) is OrderStatus.FAILED
    assert refunds(resources, failing) == 1 and refunds(resources, done) == 0
    assert balance(resources.sessions, user_id) == Decimal("100.00")


def test_simulator_webhook_resumes_fulfilment(resources: Any, redis_client: Any) -> None:
    """The simulator's own signed webhook (external_order_id, COMPLETED once the key is
    ready) is accepted, and processing it queues fulfilment, which then stores the key."""
    with LiveServer(create_app(resources)) as server, sim_server(
        webhook_url=server.url + "/webhooks/g2a", webhook_secret=TEST_SECRETS[0], key_delay_s=1.0
    ) as sim:
        order_id, _ = place_order(resources, [(sim_game(resources.sessions, sim), 1)])
        sim_fulfiller = fulfiller(resources, sim)
        assert sim_fulfiller.run(order_id).outcome is FulfilmentOutcome.PENDING  # key not ready
        event_id = wait_until(lambda: _event_ids(resources), timeout_s=10)[0]
        result = webhooks.process_event(resources.sessions, resources.broker, resources.cache,
                                        event_id)
        assert result.outcome == "processed" and result.order_id == order_id
        queued = [m for m in redis_client.hvals("dramatiq:default.msgs")
                  if b"fulfil_order" in m and str(order_id).encode() in m]
        assert queued, "processing the webhook must queue fulfilment"
        assert sim_fulfiller.run(order_id).outcome is FulfilmentOutcome.COMPLETED


def _event_ids(resources: Any) -> list[str]:
    with resources.sessions() as s:
        return list(s.scalars(select(WebhookEvent.event_id)))
