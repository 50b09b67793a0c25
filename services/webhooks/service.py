"""Processing G2A status webhooks stored by `intake`: idempotent, orphans kept, a sweeper.

`process_event`: one transaction locks the event row, resolves the order, applies the
status through `order_status.apply` (which row-locks the order) and marks the event
processed, so "applied" and "processed" commit together or not at all. Events whose order
is not known yet are kept as `orphan` and re-tried when the order (or its G2A order) appears
(`enqueue_orphans`) and by the sweeper, which also re-enqueues events whose job was lost and
dead-letters (`outcome = 'dead'`, kept for operators) what stays unprocessed past a bounded
time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import dramatiq
import structlog
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import G2APurchase, G2APurchaseStatus, Order, OrderItem, OrderStatus, WebhookEvent
from services.cache import Cache
from services.metrics import WEBHOOK_EVENTS
from services.orders import status as order_status
from services.webhooks.schemas import WebhookOutcome
from worker.enqueue import Actor, enqueue

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ProcessResult:
    event_id: str
    outcome: WebhookOutcome
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
    if result.outcome in (
        WebhookOutcome.PROCESSED, WebhookOutcome.IGNORED, WebhookOutcome.ORPHAN
    ):
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
        return ProcessResult(event_id, WebhookOutcome.MISSING)
    if event.processed_at is not None or event.outcome == WebhookOutcome.DEAD:
        return ProcessResult(event_id, WebhookOutcome.ALREADY)
    event.attempts += 1
    data = event.payload.get("data", {})
    status = order_status.parse_status(str(data.get("status", "")))
    order = _lock_target_order(session, data)
    if order is None:
        event.outcome = WebhookOutcome.ORPHAN
        return ProcessResult(event_id, WebhookOutcome.ORPHAN)

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
    outcome = WebhookOutcome.PROCESSED if acted else WebhookOutcome.IGNORED
    event.outcome = outcome
    event.last_error = None
    return ProcessResult(event_id, outcome, order.id, transition)


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
    events that were waiting for it (sent after commit). Returns their event ids.

    Fulfilment is handed this function by its job (`Fulfiller.g2a_order_stored`) rather
    than importing it: this module applies statuses through `services.orders`."""
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
            WebhookEvent.outcome == WebhookOutcome.ORPHAN,
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
                or_(WebhookEvent.outcome.is_(None), WebhookEvent.outcome != WebhookOutcome.DEAD),
                or_(
                    WebhookEvent.received_at
                    < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, dead_after_s),
                    WebhookEvent.attempts >= max_attempts,
                ),
            )
            .values(outcome=WebhookOutcome.DEAD)
            .returning(WebhookEvent.event_id)
        ).scalars().all()
        WEBHOOK_EVENTS.labels(WebhookOutcome.DEAD).inc(len(dead))
        for event_id in dead:
            log.error("ALERT webhook event dead-lettered", webhook_id=event_id,
                      alert="webhook_dead_letter")
        event_ids = session.scalars(
            select(WebhookEvent.event_id)
            .where(
                WebhookEvent.processed_at.is_(None),
                or_(WebhookEvent.outcome.is_(None), WebhookEvent.outcome != WebhookOutcome.DEAD),
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
