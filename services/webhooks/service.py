"""G2A status webhooks: Standard Webhooks verification, a Postgres inbox, idempotent processing.

Receiving (`verify` then `store`): the signature is checked against every configured secret
(rotation) before the body is parsed or anything is stored; the event is then inserted with
`ON CONFLICT (event_id) DO NOTHING`, so a redelivery of the same `webhook-id` is answered 200
and has no second effect. `process_webhook_event` is enqueued in that transaction and sent
after its commit; an event whose job never arrives is still an unprocessed row, which the
sweeper re-sends (so that actor needs no outbox row: see `worker.enqueue`).

Processing (`process_event`): one transaction locks the event row, resolves the order,
applies the status through `order_status.apply` (which row-locks the order) and marks the
event processed, so "applied" and "processed" commit together or not at all. Events whose
order is not known yet are kept as `orphan` and re-tried when the order (or its G2A order)
appears and by the sweeper, which also re-enqueues events whose job was lost and dead-letters
(`outcome = 'dead'`, kept for operators) what stays unprocessed past a bounded time.
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
import structlog
from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from db.models import (
    G2APurchase,
    G2APurchaseStatus,
    Order,
    OrderItem,
    OrderStatus,
    WebhookEvent,
)
from services.cache import Cache
from services.metrics import WEBHOOK_EVENTS
from services.orders import status as order_status
from worker.enqueue import Actor, enqueue

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 256 * 1024
TOLERANCE_S = 300
EVENT_TYPE = "order.status_changed"

OUTCOME_PROCESSED = "processed"
OUTCOME_IGNORED = "ignored"  # valid, stored, but not a forward move (late / out of order)
OUTCOME_ORPHAN = "orphan"
OUTCOME_DEAD = "dead"


class WebhookRejected(Exception):
    """Answer `status` with `code`; nothing was stored."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class WebhookPayload:
    event_type: str
    status: OrderStatus
    order_id: uuid.UUID | None
    external_order_id: str | None
    occurred_at: datetime
    body: dict[str, Any]


# --- receiving ---------------------------------------------------------------------------


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
    """Standard Webhooks verification; raises WebhookRejected (401 / 400 / 413)."""
    if len(body) > MAX_BODY_BYTES:
        raise WebhookRejected(413, "payload_too_large", "webhook body over 256 KiB")
    if not msg_id or not timestamp or not signature:
        raise WebhookRejected(401, "invalid_signature", "missing webhook signature headers")
    if len(msg_id) > 256:
        raise WebhookRejected(400, "invalid_webhook", "webhook-id too long")
    given = _signatures(signature)
    if not given:
        raise WebhookRejected(401, "invalid_signature", "no v1 signature")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = [hmac.new(secret, signed, hashlib.sha256).digest() for secret in secrets]
    # Compare every pair without short-circuiting on the first secret, in constant time each.
    matched = False
    for mac in expected:
        for sig in given:
            matched |= hmac.compare_digest(mac, sig)
    if not matched:
        raise WebhookRejected(401, "invalid_signature", "signature does not match")
    # Checked after the signature, so an unauthenticated caller learns nothing about it.
    try:
        ts = int(timestamp)
    except ValueError:
        raise WebhookRejected(
            400, "invalid_timestamp", "webhook-timestamp is not an integer"
        ) from None
    if abs(now - ts) > TOLERANCE_S:
        raise WebhookRejected(400, "invalid_timestamp", "webhook-timestamp outside ±300 s")


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def parse(body: bytes) -> WebhookPayload:
    """Validate the body shape of CONTRACT §5; raises WebhookRejected(400)."""

    def bad(message: str) -> WebhookRejected:
        return WebhookRejected(400, "invalid_webhook", message)

    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad("body is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
        raise bad("body must be an object with a data object")
    if _has_nul(data):
        # jsonb cannot store \u0000: refuse it here (400, the sender stops) rather than fail
        # the insert (500, the sender retries a poison event forever).
        raise bad("body must not contain \\u0000")
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
) -> bool:
    """Insert the event once and queue its processing; False for a duplicate `webhook-id`.

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
    return inserted is not None


# --- processing --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessResult:
    event_id: str
    outcome: str  # processed | ignored | orphan | dead | already (done before) | missing
    order_id: uuid.UUID | None = None
    transition: order_status.Transition | None = None


def _lock_target_order(session: Session, data: dict[str, Any]) -> Order | None:
    """Row-lock the order the event is about; None while it is unknown (an orphan)."""
    if data.get("order_id"):
        return order_status.lock_order(session, uuid.UUID(str(data["order_id"])))
    order_id = session.scalar(
        select(OrderItem.order_id)
        .join(G2APurchase, G2APurchase.order_item_id == OrderItem.id)
        .where(G2APurchase.g2a_order_id == str(data["external_order_id"]))
    )
    return None if order_id is None else order_status.lock_order(session, order_id)


def process_event(
    sessions: sessionmaker[Session], broker: dramatiq.Broker, cache: Cache, event_id: str
) -> ProcessResult:
    """Apply one stored event exactly once (idempotent: safe to run twice or concurrently)."""
    with structlog.contextvars.bound_contextvars(webhook_id=event_id):
        try:
            with sessions() as session, session.begin():
                result = _process_in_transaction(session, broker, event_id)
        except Exception as exc:
            _record_error(sessions, event_id, exc)
            raise
    if result.outcome in (OUTCOME_PROCESSED, OUTCOME_IGNORED, OUTCOME_ORPHAN):
        WEBHOOK_EVENTS.labels(result.outcome).inc()
    if result.transition is not None and result.transition.changed:
        cache.invalidate(result.transition.cache_keys)
    log.info("webhook event handled", webhook_id=event_id, outcome=result.outcome,
             order_id=str(result.order_id) if result.order_id else None)
    return result


def _process_in_transaction(
    session: Session, broker: dramatiq.Broker, event_id: str
) -> ProcessResult:
    # The event lock makes concurrent deliveries of the same job queue up; the loser then
    # sees processed_at set and does nothing.
    event = session.execute(
        select(WebhookEvent).where(WebhookEvent.event_id == event_id).with_for_update()
    ).scalar_one_or_none()
    if event is None:
        return ProcessResult(event_id, "missing")
    if event.processed_at is not None or event.outcome == OUTCOME_DEAD:
        return ProcessResult(event_id, "already")
    event.attempts += 1
    data = event.payload.get("data", {})
    status = order_status.parse_status(str(data.get("status", "")))
    order = _lock_target_order(session, data)
    if order is None:
        event.outcome = OUTCOME_ORPHAN
        return ProcessResult(event_id, OUTCOME_ORPHAN)

    bound = log.bind(order_id=str(order.id), webhook_id=event_id, status=status.value)
    external = data.get("external_order_id") if not data.get("order_id") else None
    source = f"webhook:{event_id}"
    if external is not None and status is OrderStatus.COMPLETED:
        # A G2A order is done: its key is ready. The order itself completes only when every
        # key is stored, so this resumes fulfilment rather than completing the order.
        transition = order_status.Transition(
            order.id, order.user_id, order.status, order.status, changed=False,
            needs_fulfilment=order.status in (OrderStatus.PENDING, OrderStatus.PROCESSING),
        )
    else:
        if external is not None and status in order_status.REFUNDING:
            session.execute(
                update(G2APurchase)
                .where(
                    G2APurchase.g2a_order_id == str(external),
                    G2APurchase.status.in_(
                        [G2APurchaseStatus.CREATED, G2APurchaseStatus.PAID]
                    ),
                )
                .values(status=G2APurchaseStatus.FAILED, last_error=f"g2a: {status.value}",
                        updated_at=func.now())
            )
        applied = order_status.apply(session, order.id, status, source=source, order=order)
        assert applied is not None  # the order is locked, so it exists
        transition = applied
    if transition.needs_fulfilment:
        enqueue(session, broker, Actor.FULFIL_ORDER, str(order.id))
        bound.info("webhook resumes fulfilment")
    event.processed_at = func.now()
    acted = transition.changed or transition.needs_fulfilment
    event.outcome = OUTCOME_PROCESSED if acted else OUTCOME_IGNORED
    event.last_error = None
    return ProcessResult(event_id, event.outcome, order.id, transition)


def _record_error(sessions: sessionmaker[Session], event_id: str, exc: Exception) -> None:
    try:
        with sessions() as session, session.begin():
            session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.event_id == event_id, WebhookEvent.processed_at.is_(None))
                .values(attempts=WebhookEvent.attempts + 1, last_error=repr(exc)[:2000])
            )
    except Exception as inner:  # Postgres down: the sweeper will find the event anyway
        log.warning("could not record webhook error", webhook_id=event_id, error=str(inner))


# --- orphans and the sweeper -------------------------------------------------------------


def enqueue_orphans(
    session: Session,
    broker: dramatiq.Broker,
    *,
    order_id: uuid.UUID | None = None,
    g2a_order_id: str | None = None,
) -> list[str]:
    """Inside the transaction that makes an order (or G2A order) known: enqueue the orphan
    events that were waiting for it (sent after commit). Returns their event ids."""
    conditions = []
    if order_id is not None:
        conditions.append(WebhookEvent.payload["data"]["order_id"].astext == str(order_id))
    if g2a_order_id is not None:
        conditions.append(
            WebhookEvent.payload["data"]["external_order_id"].astext == str(g2a_order_id)
        )
    if not conditions:
        return []
    event_ids = session.scalars(
        select(WebhookEvent.event_id).where(
            WebhookEvent.processed_at.is_(None),
            WebhookEvent.outcome == OUTCOME_ORPHAN,
            or_(*conditions),
        )
    ).all()
    for event_id in event_ids:
        enqueue(session, broker, Actor.PROCESS_WEBHOOK_EVENT, event_id)
    return list(event_ids)


@dataclass(frozen=True, slots=True)
class SweepResult:
    requeued: int
    dead: int


def sweep(
    sessions: sessionmaker[Session],
    broker: dramatiq.Broker,
    *,
    min_age_s: float = 30,
    dead_after_s: float = 24 * 3600,
    max_attempts: int = 50,
    limit: int = 500,
) -> SweepResult:
    """Re-enqueue unprocessed events older than `min_age_s` (lost job, broker down, orphan
    whose order may exist now); dead-letter those older than `dead_after_s` or tried
    `max_attempts` times. Dead events stay in the table, visible, with their last error."""
    with sessions() as session, session.begin():
        dead = session.execute(
            update(WebhookEvent)
            .where(
                WebhookEvent.processed_at.is_(None),
                or_(WebhookEvent.outcome.is_(None), WebhookEvent.outcome != OUTCOME_DEAD),
                or_(
                    WebhookEvent.received_at
                    < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, dead_after_s),
                    WebhookEvent.attempts >= max_attempts,
                ),
            )
            .values(outcome=OUTCOME_DEAD)
            .returning(WebhookEvent.event_id)
        ).scalars().all()
        WEBHOOK_EVENTS.labels(OUTCOME_DEAD).inc(len(dead))
        for event_id in dead:
            log.error("ALERT webhook event dead-lettered", webhook_id=event_id,
                      alert="webhook_dead_letter")
        event_ids = session.scalars(
            select(WebhookEvent.event_id)
            .where(
                WebhookEvent.processed_at.is_(None),
                or_(WebhookEvent.outcome.is_(None), WebhookEvent.outcome != OUTCOME_DEAD),
                WebhookEvent.received_at
                < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, min_age_s),
            )
            .order_by(WebhookEvent.received_at)
            .limit(limit)
        ).all()
        for event_id in event_ids:
            enqueue(session, broker, Actor.PROCESS_WEBHOOK_EVENT, event_id)
    if event_ids or dead:
        log.info("webhook sweep", requeued=len(event_ids), dead=len(dead))
    return SweepResult(requeued=len(event_ids), dead=len(dead))
