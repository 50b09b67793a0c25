"""Receiving G2A status webhooks: Standard Webhooks verification, then a Postgres inbox.

`verify` checks the signature against every configured secret (rotation) before the body is
parsed or anything is stored; `parse` checks the body shape of CONTRACT §5; `store` inserts
the event with `ON CONFLICT (event_id) DO NOTHING`, so a redelivery of the same
`webhook-id` is answered `duplicate` and has no second effect. `process_webhook_event` is
enqueued in that transaction and sent after its commit; an event whose job never arrives is
still an unprocessed row, which the sweeper (`service.sweep`) re-sends, so that actor needs
no outbox row (see `worker.enqueue`). Processing is in `service`.

`inbox_writer.store_async` is the same insert for the web's event loop (group commit).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dramatiq
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from db.models import OrderStatus, WebhookEvent
from services.orders import status as order_status
from services.webhooks.errors import (
    InvalidSignature,
    InvalidTimestamp,
    MalformedWebhook,
    PayloadTooLarge,
)
from services.webhooks.schemas import WebhookReceipt
from worker.enqueue import Actor, enqueue

MAX_BODY_BYTES = 256 * 1024
TOLERANCE_S = 300
# CONTRACT §5: a signed body nested deeper than this is malformed (400).
MAX_NESTING = 64
EVENT_TYPE = "order.status_changed"


@dataclass(frozen=True, slots=True)
class WebhookPayload:
    event_type: str
    status: OrderStatus
    order_id: uuid.UUID | None
    external_order_id: str | None
    occurred_at: datetime
    body: dict[str, Any]  # the signed JSON as sent, stored as jsonb: arbitrary past `data`


def _signatures(header: str) -> list[bytes]:
    out: list[bytes] = []
    for part in header.split():
        version, _, value = part.partition(",")
        if version != "v1" or not value:
            continue
        try:
            out.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return out


def verify(
    secrets: Sequence[bytes],
    *,
    msg_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
) -> None:
    """Standard Webhooks verification; raises PayloadTooLarge, InvalidSignature,
    MalformedWebhook or InvalidTimestamp."""
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge()
    if not msg_id or not timestamp or not signature:
        raise InvalidSignature("missing webhook signature headers")
    if len(msg_id) > 256:
        raise MalformedWebhook("webhook-id too long")
    given = _signatures(signature)
    if not given:
        raise InvalidSignature("no v1 signature")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = [hmac.new(secret, signed, hashlib.sha256).digest() for secret in secrets]
    # Compare every pair without short-circuiting on the first secret, in constant time each.
    matched = False
    for mac in expected:
        for sig in given:
            matched |= hmac.compare_digest(mac, sig)
    if not matched:
        raise InvalidSignature("signature does not match")
    # Checked after the signature, so an unauthenticated caller learns nothing about it.
    try:
        ts = int(timestamp)
    except ValueError:
        raise InvalidTimestamp("webhook-timestamp is not an integer") from None
    if abs(now - ts) > TOLERANCE_S:
        raise InvalidTimestamp("webhook-timestamp outside ±300 s")


def _check_tree(document: object) -> str | None:
    """Why a parsed body cannot be stored (too deep, or a NUL jsonb cannot hold), or None.

    Iterative, with an explicit stack: this runs on untrusted input, so it must not recurse
    (a body nested a few hundred levels deep would otherwise end in a RecursionError and a
    500 the sender retries forever).
    """
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return "body must not contain \\u0000"
            continue
        if isinstance(value, dict | list):
            if depth > MAX_NESTING:
                return f"body is nested deeper than {MAX_NESTING} levels"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                stack.append((key, depth))
                stack.append((item, depth + 1))
    return None


def parse(body: bytes) -> WebhookPayload:
    """Validate the body shape of CONTRACT §5; raises MalformedWebhook."""

    def bad(message: str) -> MalformedWebhook:
        return MalformedWebhook(message)

    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad("body is not JSON") from None
    except RecursionError:
        # The C decoder refuses nesting past the interpreter's recursion limit.
        raise bad(f"body is nested deeper than {MAX_NESTING} levels") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
        raise bad("body must be an object with a data object")
    # Refused here (400, the sender stops) rather than at the insert (500, the sender
    # retries a poison event forever): jsonb cannot store \u0000.
    problem = _check_tree(data)
    if problem is not None:
        raise bad(problem)
    event_type = data.get("type")
    if event_type != EVENT_TYPE:
        raise bad(f"unsupported event type {event_type!r}")
    inner = data["data"]
    raw_status = inner.get("status")
    if not isinstance(raw_status, str):
        raise bad("data.status must be a string")
    try:
        status = order_status.parse_status(raw_status)
    except ValueError as exc:
        raise bad(str(exc)) from None
    occurred_at = _parse_occurred_at(inner.get("occurred_at"))
    if occurred_at is None:
        raise bad("data.occurred_at must be an ISO-8601 date-time string")
    order_id: uuid.UUID | None = None
    if inner.get("order_id") is not None:
        try:
            order_id = uuid.UUID(str(inner["order_id"]))
        except ValueError:
            raise bad("data.order_id is not a uuid") from None
    external = inner.get("external_order_id")
    if external is not None and (not isinstance(external, str | int) or str(external) == ""):
        raise bad("data.external_order_id must be a string")
    if order_id is None and external is None:
        raise bad("data.order_id or data.external_order_id is required")
    return WebhookPayload(
        event_type, status, order_id, None if external is None else str(external), occurred_at,
        data,
    )


def _parse_occurred_at(value: object) -> datetime | None:
    """ISO-8601 as Python 3.11's `fromisoformat` reads it (extended and basic forms, `Z`,
    offsets, fractions); None for anything else. Deliberately lenient about *which* ISO-8601
    form: a 400 makes the sender drop the event, so a valid but unusual spelling must not be
    refused. A value without an offset is kept as sent (the field is informational)."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        return None


def store(
    sessions: sessionmaker[Session], broker: dramatiq.Broker, msg_id: str, payload: WebhookPayload
) -> WebhookReceipt:
    """Insert the event once and queue its processing; `duplicate` for a known `webhook-id`.

    The inbox row is its own outbox: once it is committed the event cannot be lost, and if
    the broker is down (or we die before sending) the sweeper finds the unprocessed row.
    """
    with sessions() as session, session.begin():
        inserted = session.execute(
            pg_insert(WebhookEvent)
            .values(event_id=msg_id, type=payload.event_type, payload=payload.body)
            .on_conflict_do_nothing(index_elements=[WebhookEvent.event_id])
            .returning(WebhookEvent.id)
        ).scalar_one_or_none()
        if inserted is not None:
            enqueue(session, broker, Actor.PROCESS_WEBHOOK_EVENT, msg_id)
    return WebhookReceipt(
        status="accepted" if inserted is not None else "duplicate", webhook_id=msg_id
    )
