"""Webhook inbox: verification, store-once, idempotent processing, orphans and the sweeper."""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, insert, select, update

from db.models import G2APurchase, G2APurchaseStatus, OrderItem, OrderStatus, WebhookEvent
from keysync.resources import Resources
from services.orders import service as orders
from services.webhooks import intake
from services.webhooks import service as webhooks
from services.webhooks.errors import (
    InvalidSignature,
    InvalidTimestamp,
    MalformedWebhook,
    PayloadTooLarge,
    WebhookRejected,
)
from services.webhooks.schemas import WebhookOutcome
from tests.order_flows import assert_invariants, order_row, place_order, refunds
from tests.order_helpers import (
    TEST_SECRETS,
    balance,
    make_game,
    secret_bytes,
    signed_headers,
    status_body,
)
from worker.broker import create_broker

SECRETS = [secret_bytes(s) for s in TEST_SECRETS]


def _verify(body: bytes, headers: dict[str, str], now: float | None = None) -> None:
    intake.verify(
        SECRETS, msg_id=headers.get("webhook-id"), timestamp=headers.get("webhook-timestamp"),
        signature=headers.get("webhook-signature"), body=body,
        now=time.time() if now is None else now,
    )


def _rejected(
    body: bytes, headers: dict[str, str], now: float | None = None
) -> type[WebhookRejected]:
    with pytest.raises(WebhookRejected) as info:
        _verify(body, headers, now)
    return type(info.value)


def test_verify_accepts_any_configured_secret_and_any_listed_signature() -> None:
    body = status_body("FAILED", order_id=uuid.uuid4())
    for secret in TEST_SECRETS:
        _verify(body, signed_headers(body, secret=secret))
    headers = signed_headers(body)
    headers["webhook-signature"] = "v1,AAAA v2,zzz " + headers["webhook-signature"]
    _verify(body, headers)


def test_verify_rejections() -> None:
    body = status_body("FAILED", order_id=uuid.uuid4())
    good = signed_headers(body)
    assert _rejected(body + b" ", good) is InvalidSignature  # body changed after signing
    assert _rejected(body, {**good, "webhook-id": "other"}) is InvalidSignature
    unsigned = {k: v for k, v in good.items() if k != "webhook-signature"}
    assert _rejected(body, unsigned) is InvalidSignature
    assert _rejected(body, {**good, "webhook-signature": "v1,not-base64!"}) is InvalidSignature
    other = "whsec_" + "b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldC1vdGhlcg=="
    assert _rejected(body, signed_headers(body, secret=other)) is InvalidSignature
    old = signed_headers(body, ts=int(time.time()) - 301)
    assert _rejected(body, old) is InvalidTimestamp
    assert _rejected(body, signed_headers(body, ts=int(time.time()) + 301)) is InvalidTimestamp
    big = b"x" * (intake.MAX_BODY_BYTES + 1)
    assert _rejected(big, signed_headers(big)) is PayloadTooLarge


@pytest.mark.parametrize(
    "body",
    # Each body is valid but for one thing (occurred_at included), so each case really
    # tests its own check rather than failing on a missing field first.
    [b"{not json", b"[]", b'{"type": "order.status_changed"}',
     b'{"type": "other", "data": {"order_id": "%s", "status": "FAILED", '
     b'"occurred_at": "2026-01-01T00:00:00Z"}}' % str(uuid.uuid4()).encode(),
     b'{"type": "order.status_changed", "data": {"order_id": "x", "status": "FAILED", '
     b'"occurred_at": "2026-01-01T00:00:00Z"}}',
     b'{"type": "order.status_changed", "data": {"status": "FAILED", '
     b'"occurred_at": "2026-01-01T00:00:00Z"}}',
     status_body("SHIPPED", order_id=uuid.uuid4())],
)
def test_parse_rejects_malformed(body: bytes) -> None:
    with pytest.raises(MalformedWebhook) as info:
        intake.parse(body)
    assert info.value.code == "invalid_webhook"


def _with_occurred_at(value: object, *, present: bool = True) -> bytes:
    data: dict[str, object] = {"order_id": str(uuid.uuid4()), "status": "FAILED"}
    if present:
        data["occurred_at"] = value
    return json.dumps({"type": "order.status_changed", "data": data}).encode()


@pytest.mark.parametrize("body", [
    _with_occurred_at(None, present=False), _with_occurred_at(None), _with_occurred_at(1767225600),
    _with_occurred_at(True), _with_occurred_at(""), _with_occurred_at("yesterday"),
    _with_occurred_at("2026-13-01T00:00:00Z"), _with_occurred_at("2026-01-01T25:00:00Z"),
    _with_occurred_at(["2026-01-01T00:00:00Z"]), _with_occurred_at({"at": "2026-01-01"}),
])
def test_parse_requires_an_iso8601_occurred_at(body: bytes) -> None:
    with pytest.raises(MalformedWebhook) as info:
        intake.parse(body)
    assert info.value.code == "invalid_webhook"
    assert "occurred_at" in info.value.message


@pytest.mark.parametrize("value, expected", [
    ("2026-01-01T00:00:00Z", datetime(2026, 1, 1, tzinfo=UTC)),
    ("2026-01-01T02:30:00+02:30", datetime(2026, 1, 1, tzinfo=UTC)),
    ("2026-01-01T00:00:00.250-05:00", datetime(2026, 1, 1, 5, 0, 0, 250000, tzinfo=UTC)),
    ("20260101T000000Z", datetime(2026, 1, 1, tzinfo=UTC)),
])
def test_parse_accepts_iso8601_forms(value: str, expected: datetime) -> None:
    assert intake.parse(_with_occurred_at(value)).occurred_at == expected


def _order(resources: Resources, status: OrderStatus | None = None
           ) -> tuple[uuid.UUID, uuid.UUID]:
    game = make_game(resources.sessions, price="25.00")
    return place_order(resources, [(game, 1)], funds="100.00", status=status)


def _store(resources: Resources, body: bytes, msg_id: str | None = None) -> str:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    receipt = intake.store(resources.sessions, resources.broker, msg_id, intake.parse(body))
    assert receipt.status == "accepted" and receipt.webhook_id == msg_id
    return msg_id


def _process(resources: Resources, msg_id: str) -> webhooks.ProcessResult:
    return webhooks.process_event(resources.sessions, resources.broker, resources.cache, msg_id)


def _event(resources: Resources, msg_id: str) -> WebhookEvent:
    with resources.sessions() as s:
        event = s.scalars(select(WebhookEvent).where(WebhookEvent.event_id == msg_id)).one()
        return event


def test_duplicate_webhook_id_is_stored_once(resources: Resources) -> None:
    order_id, _ = _order(resources)
    body = status_body("FAILED", order_id=order_id)
    msg_id = _store(resources, body)
    again = intake.store(resources.sessions, resources.broker, msg_id, intake.parse(body))
    assert again.status == "duplicate" and again.webhook_id == msg_id
    with resources.sessions() as s:
        assert s.scalar(select(func.count()).select_from(WebhookEvent)) == 1


def test_same_event_processed_100_times_concurrently_has_one_effect(resources: Resources) -> None:
    order_id, user_id = _order(resources, OrderStatus.PROCESSING)
    msg_id = _store(resources, status_body("failed", order_id=order_id))
    barrier = threading.Barrier(20)

    def hit(_: int) -> WebhookOutcome:
        if _ < 20:
            barrier.wait()
        return _process(resources, msg_id).outcome

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(hit, range(100)))
    assert outcomes.count("processed") == 1 and outcomes.count("already") == 99
    assert balance(resources.sessions, user_id) == Decimal("100.00")
    assert refunds(resources, order_id) == 1
    assert _event(resources, msg_id).attempts == 1
    assert_invariants(resources, webhook_grace=False)


def test_failed_delivered_twice_with_new_ids_refunds_once(resources: Resources) -> None:
    order_id, user_id = _order(resources, OrderStatus.PROCESSING)
    first = _store(resources, status_body("FAILED", order_id=order_id))
    second = _store(resources, status_body("FAILED", order_id=order_id))
    assert _process(resources, first).outcome == "processed"
    assert _process(resources, second).outcome == "ignored"
    assert refunds(resources, order_id) == 1
    assert balance(resources.sessions, user_id) == Decimal("100.00")
    assert_invariants(resources, webhook_grace=False)


def test_completed_for_an_order_without_keys_resumes_fulfilment(resources: Resources) -> None:
    order_id, _ = _order(resources, OrderStatus.PROCESSING)
    msg_id = _store(resources, status_body("COMPLETED", order_id=order_id))
    result = _process(resources, msg_id)
    assert result.outcome == "processed"  # acted on: fulfilment was queued
    assert result.transition is not None and result.transition.needs_fulfilment
    assert not result.transition.changed
    assert order_row(resources, order_id).status is OrderStatus.PROCESSING


def test_cached_order_shows_status_after_webhook(resources: Resources) -> None:
    """T025: processing invalidates order:{id} and the user's keys."""
    order_id, user_id = _order(resources, OrderStatus.PROCESSING)
    kek = resources.settings.key_encryption_key.get_secret_value()
    with resources.sessions() as s:
        assert orders.get_order(s, resources.cache, user_id, order_id,
                                key_encryption_key=kek).status is OrderStatus.PROCESSING
        assert orders.list_orders(s, resources.cache, user_id,
                                  key_encryption_key=kek).items[0].status is OrderStatus.PROCESSING
    _process(resources, _store(resources, status_body("Cancelled", order_id=order_id)))
    with resources.sessions() as s:
        assert orders.get_order(s, resources.cache, user_id, order_id,
                                key_encryption_key=kek).status is OrderStatus.CANCELLED
        assert orders.list_orders(s, resources.cache, user_id,
                                  key_encryption_key=kek).items[0].status is OrderStatus.CANCELLED


def test_orphan_is_kept_and_applied_when_the_g2a_order_appears(resources: Resources) -> None:
    order_id, user_id = _order(resources, OrderStatus.PROCESSING)
    external = "g2a-123456"
    msg_id = _store(resources, status_body("FAILED", external_order_id=external))
    assert _process(resources, msg_id).outcome == "orphan"
    event = _event(resources, msg_id)
    assert event.processed_at is None and event.outcome == "orphan"
    # the G2A order becomes known (as fulfilment records it), with the orphan staged
    with resources.sessions() as s, s.begin():
        item_id = s.scalars(select(OrderItem.id).where(OrderItem.order_id == order_id)).one()
        s.add(G2APurchase(order_item_id=item_id, unit_index=0, g2a_order_id=external,
                          status=G2APurchaseStatus.CREATED))
        s.flush()
        staged = webhooks.enqueue_orphans(s, resources.broker, g2a_order_id=external)
    assert staged == [msg_id]
    assert _process(resources, msg_id).outcome == "processed"
    assert order_row(resources, order_id).status is OrderStatus.FAILED
    with resources.sessions() as s:
        unit = s.scalars(select(G2APurchase)).one()
        assert unit.status is G2APurchaseStatus.FAILED
    assert balance(resources.sessions, user_id) == Decimal("100.00")
    assert_invariants(resources, webhook_grace=False)


def test_sweeper_requeues_lost_jobs_and_dead_letters(
    resources: Resources, redis_client: Any
) -> None:
    order_id, _ = _order(resources, OrderStatus.PROCESSING)
    lost = _store(resources, status_body("FAILED", order_id=order_id))
    hopeless = _store(resources, status_body("FAILED", external_order_id="never-known"))
    with resources.sessions() as s, s.begin():
        s.execute(update(WebhookEvent).where(WebhookEvent.event_id == hopeless)
                  .values(attempts=50, outcome="orphan"))
    redis_client.delete("dramatiq:default", "dramatiq:default.msgs")
    result = webhooks.sweep(resources.sessions, resources.broker, min_age_s=0)
    assert (result.requeued, result.dead) == (1, 1)
    assert redis_client.llen("dramatiq:default") == 1
    assert _event(resources, hopeless).outcome == "dead"
    assert _process(resources, hopeless).outcome == "already"  # dead stays dead
    assert _process(resources, lost).outcome == "processed"
    assert webhooks.sweep(resources.sessions, resources.broker, min_age_s=0).requeued == 0
    assert_invariants(resources, webhook_grace=False)


def _stranded(resources: Resources, count: int) -> None:
    """`count` events stored two minutes ago whose jobs never reached the broker."""
    received = datetime.now(UTC) - timedelta(minutes=2)
    with resources.sessions() as s, s.begin():
        s.execute(insert(WebhookEvent), [
            {"event_id": f"msg_stranded_{i}", "type": "order.status_changed",
             "payload": {}, "received_at": received} for i in range(count)])


def test_sweeper_resends_a_stranded_backlog_at_once_but_never_doubles_a_live_queue(
    resources: Resources, redis_client: Any, dead_redis_url: str
) -> None:
    _stranded(resources, 1200)
    # Nothing queued: none of the 1,200 has a job, so one run re-sends them all, not 500.
    assert webhooks.sweep(resources.sessions, resources.broker, limit=500).requeued == 1200
    assert redis_client.llen("dramatiq:default") == 1200
    # Their jobs now wait for a worker that is behind: a run sends only the minimum again.
    assert webhooks.sweep(resources.sessions, resources.broker, limit=500).requeued == 500
    assert redis_client.llen("dramatiq:default") == 1700
    # A run re-sends at most `max_requeued`.
    redis_client.delete("dramatiq:default", "dramatiq:default.msgs")
    assert webhooks.sweep(resources.sessions, resources.broker, limit=500,
                          max_requeued=800).requeued == 800
    # Redis unreadable: the minimum (the sends fail too, and wait for the next run).
    dead = create_broker(dead_redis_url)
    try:
        assert webhooks.sweep(resources.sessions, dead, limit=500).requeued == 500
    finally:
        dead.client.close()

class _CountingCursor(psycopg.Cursor[Any]):
    """psycopg's own cursor, keeping what it sends: SQLAlchemy and the hot path's direct
    statements both execute through a connection's `cursor_factory`."""

    sent: list[str] = []

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(str(query))
        return super().execute(query, *args, **kwargs)


def test_a_refunding_event_costs_two_statements(resources: Resources) -> None:
    """The hot path: claim + order lock in one statement, the move, refund, credit and
    processed mark in another (plus BEGIN/COMMIT); each effect exactly once."""
    order_id, user_id = _order(resources, OrderStatus.PROCESSING)
    msg_id = _store(resources, status_body("CANCELLED", order_id=order_id))
    _CountingCursor.sent = statements = []
    with resources.sessions() as s, s.begin():
        driver = s.connection().connection.driver_connection
        driver.cursor_factory = _CountingCursor
        try:
            result = webhooks.process_in_transaction(s, resources.broker, msg_id)
        finally:
            driver.cursor_factory = psycopg.Cursor
    webhooks.after_commit(resources.cache, [result])
    assert result.outcome == "processed" and result.transition is not None
    assert result.transition.refunded and result.transition.status is OrderStatus.CANCELLED
    assert len(statements) == 2, statements
    assert order_row(resources, order_id).status is OrderStatus.CANCELLED
    assert refunds(resources, order_id) == 1
    assert balance(resources.sessions, user_id) == Decimal("100.00")
    stored = _event(resources, msg_id)
    assert (stored.outcome, stored.attempts, stored.last_error) == ("processed", 1, None)
    assert stored.processed_at is not None
    assert_invariants(resources, webhook_grace=False)


def test_a_dead_event_is_left_alone(resources: Resources) -> None:
    order_id, _ = _order(resources, OrderStatus.PROCESSING)
    msg_id = _store(resources, status_body("FAILED", order_id=order_id))
    with resources.sessions() as s, s.begin():
        s.execute(update(WebhookEvent).where(WebhookEvent.event_id == msg_id)
                  .values(outcome=WebhookOutcome.DEAD, attempts=50))
    assert _process(resources, msg_id).outcome == "already"
    assert _process(resources, "msg_never_stored").outcome == "missing"
    stored = _event(resources, msg_id)
    assert (stored.outcome, stored.attempts, stored.processed_at) == ("dead", 50, None)
    assert order_row(resources, order_id).status is OrderStatus.PROCESSING
    assert refunds(resources, order_id) == 0
