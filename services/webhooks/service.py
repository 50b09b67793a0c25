"""Processing G2A status webhooks stored by `intake`: idempotent, orphans kept, a sweeper.

`process_event`: one transaction claims and locks the event row and row-locks its order
(one statement), then moves the order forward under `order_status`'s rules (`allows`;
COMPLETED, which counts keys, through `order_status.apply` itself), refunds once and marks
the event processed (one more statement), so "applied" and "processed" commit together or
not at all. Core statements throughout: this is the worker's hottest path. Events whose order
is not known yet are kept as `orphan` and re-tried when the order (or its G2A order) appears
(`enqueue_orphans`) and by the sweeper, which also re-enqueues events whose job was lost and
dead-letters (`outcome = 'dead'`, kept for operators) what stays unprocessed past a bounded
time.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import cast

import dramatiq
import psycopg
import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from psycopg.rows import TupleRow
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import G2APurchase, G2APurchaseStatus, OrderStatus, WebhookEvent
from services.cache import Cache
from services.metrics import WEBHOOK_EVENTS
from services.orders import status as order_status
from services.webhooks.schemas import WebhookOutcome
from worker.enqueue import Actor, enqueue
from worker.inspect.reader import BrokerInspector

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ProcessResult:
    event_id: str
    outcome: WebhookOutcome
    order_id: uuid.UUID | None = None
    transition: order_status.Transition | None = None


# One round trip claims the event and locks its order, in that order. The UPDATE row-locks
# the event (a concurrent delivery of the same job queues up here, then re-checks the WHERE
# against the committed row, finds `processed_at` set and gets nothing back); only then does
# the lateral subquery resolve the order and row-lock it, the lock that serialises every
# status change of that order (webhooks, fulfilment, poller). No order row: an orphan.
_CLAIM_AND_LOCK = (
    """
    WITH claimed AS (
        UPDATE webhook_events SET attempts = attempts + 1
        WHERE event_id = %(event_id)s AND processed_at IS NULL
          AND outcome IS DISTINCT FROM %(dead)s
        RETURNING payload
    )
    SELECT claimed.payload, target.id, target.user_id, target.status, target.total
    FROM claimed LEFT JOIN LATERAL (
        SELECT id, user_id, status, total FROM orders
        WHERE id = CASE
            WHEN coalesce(claimed.payload -> 'data' ->> 'order_id', '') <> ''
            THEN CAST(claimed.payload -> 'data' ->> 'order_id' AS uuid)
            ELSE (SELECT order_items.order_id FROM order_items
                  JOIN g2a_purchases ON g2a_purchases.order_item_id = order_items.id
                  WHERE g2a_purchases.g2a_order_id
                        = claimed.payload -> 'data' ->> 'external_order_id'
                  LIMIT 1)
        END
        FOR UPDATE
    ) AS target ON true
    """
)
# The forward move (when `changed`), its refund exactly once, the balance credit only when
# that refund row was inserted (the partial unique index allows one REFUND per order), and
# the event marked done: one statement, so "applied" and "processed" commit together. The
# order is already locked; the refund row and the user are touched in `status._refund_once`'s
# order (transactions, then users), so lock order is unchanged.
_SETTLE = (
    """
    WITH moved AS (
        UPDATE orders SET status = %(status)s, updated_at = now()
        WHERE id = %(order_id)s AND CAST(%(changed)s AS boolean)
        RETURNING id, user_id
    ), refund AS (
        INSERT INTO transactions (id, user_id, order_id, type, amount, status)
        SELECT %(refund_id)s, user_id, id, 'REFUND', %(amount)s, 'COMPLETED' FROM moved
        WHERE CAST(%(amount)s AS numeric) > 0
        ON CONFLICT (order_id, type)
            WHERE order_id IS NOT NULL AND type IN ('PURCHASE', 'REFUND')
        DO NOTHING
        RETURNING user_id, amount
    ), credited AS (
        UPDATE users SET balance = balance + refund.amount
        FROM refund WHERE users.id = refund.user_id
        RETURNING users.id
    )
    UPDATE webhook_events SET processed_at = now(), outcome = %(outcome)s, last_error = NULL
    WHERE event_id = %(event_id)s
    RETURNING (SELECT count(*) FROM credited)
    """
)


@dataclass(frozen=True, slots=True)
class _Locked:
    """The row-locked order an event is about, as read under its lock."""

    id: uuid.UUID
    user_id: uuid.UUID
    status: OrderStatus
    total: Decimal


def process_event(
    sessions: sessionmaker[Session], broker: dramatiq.Broker, cache: Cache, event_id: str
) -> ProcessResult:
    """Apply one stored event exactly once (idempotent: safe to run twice or concurrently)."""
    with structlog.contextvars.bound_contextvars(webhook_id=event_id):
        try:
            with sessions() as session, session.begin():
                result = process_in_transaction(session, broker, event_id)
        except Exception as exc:
            _record_error(sessions, event_id, exc)
            raise
    after_commit(cache, [result])
    log_handled(result)
    return result


def process_events(
    sessions: sessionmaker[Session], broker: dramatiq.Broker, cache: Cache,
    event_ids: Sequence[str],
) -> dict[str, ProcessResult]:
    """`process_event` for several events in one transaction (a group commit, see `batch`):
    each event is applied exactly as alone, in the order given, so two events of one order
    see each other's effect. Raises, with nothing applied, when any of them fails: the
    caller then processes them one by one, which records each one's own error."""
    with sessions() as session, session.begin():
        results = {event_id: process_in_transaction(session, broker, event_id)
                   for event_id in event_ids}
    after_commit(cache, results.values())
    return results


def after_commit(cache: Cache, results: Iterable[ProcessResult]) -> None:
    """Counters and cache invalidation for committed results (one Redis call for all)."""
    stale: list[str] = []
    for result in results:
        if result.outcome in _COUNTED:
            WEBHOOK_EVENTS.labels(result.outcome).inc()
        if result.transition is not None and result.transition.changed:
            stale.extend(result.transition.cache_keys)
    cache.invalidate(stale)


def log_handled(result: ProcessResult) -> None:
    log.info("webhook event handled", webhook_id=result.event_id, outcome=result.outcome,
             order_id=str(result.order_id) if result.order_id else None)


_COUNTED = frozenset({WebhookOutcome.PROCESSED, WebhookOutcome.IGNORED, WebhookOutcome.ORPHAN})


def process_in_transaction(
    session: Session, broker: dramatiq.Broker, event_id: str
) -> ProcessResult:
    """Claim, apply and mark one event inside the caller's transaction; the caller runs
    `after_commit` once it has committed."""
    # The two statements every event runs go straight to the driver, on the session's
    # connection and in its transaction: the ORM's unit of work, then SQLAlchemy's
    # execution layer, were most of the CPU this hot path spent, for rows it never needs
    # as objects.
    driver = cast("psycopg.Connection[TupleRow]",
                  session.connection().connection.driver_connection)
    with driver.cursor() as cursor:
        return _process(session, cursor, broker, event_id)


def _process(
    session: Session, cursor: psycopg.Cursor[TupleRow], broker: dramatiq.Broker, event_id: str
) -> ProcessResult:
    conn = session.connection()
    claimed = cursor.execute(
        _CLAIM_AND_LOCK, {"event_id": event_id, "dead": WebhookOutcome.DEAD.value}
    ).fetchone()
    if claimed is None:
        known = conn.execute(
            select(WebhookEvent.id).where(WebhookEvent.event_id == event_id)
        ).first()
        return ProcessResult(
            event_id, WebhookOutcome.MISSING if known is None else WebhookOutcome.ALREADY
        )
    payload, order_id, user_id, order_status_value, total = claimed
    data = payload.get("data", {})
    status = order_status.parse_status(str(data.get("status", "")))
    if order_id is None:
        conn.execute(
            update(WebhookEvent)
            .where(WebhookEvent.event_id == event_id)
            .values(outcome=WebhookOutcome.ORPHAN)
        )
        return ProcessResult(event_id, WebhookOutcome.ORPHAN)
    order = _Locked(order_id, user_id, OrderStatus(order_status_value), total)

    bound = log.bind(order_id=str(order.id), webhook_id=event_id, status=status.value)
    external = data.get("external_order_id") if not data.get("order_id") else None
    if external is not None and status is OrderStatus.COMPLETED:
        # A G2A order is done: its key is ready. The order itself completes only when every
        # key is stored, so this resumes fulfilment rather than completing the order.
        transition = order_status.Transition(
            order.id, order.user_id, order.status, order.status, changed=False,
            needs_fulfilment=order.status in (OrderStatus.PENDING, OrderStatus.PROCESSING),
        )
    else:
        if external is not None and status in order_status.REFUNDING:
            conn.execute(
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
        transition = _transition(session, order, status, source=f"webhook:{event_id}")
    if transition.needs_fulfilment:
        enqueue(session, broker, Actor.FULFIL_ORDER, str(order.id))
        bound.info("webhook resumes fulfilment")
    acted = transition.changed or transition.needs_fulfilment
    outcome = WebhookOutcome.PROCESSED if acted else WebhookOutcome.IGNORED
    # A forward move `_transition` left to this statement (COMPLETED was written by apply).
    pending = transition.changed and status is not OrderStatus.COMPLETED
    refund = order.total if pending and status in order_status.REFUNDING else Decimal(0)
    settled = cursor.execute(_SETTLE, {
        "status": status.value, "order_id": order.id, "changed": pending,
        "refund_id": uuid.uuid4(), "amount": refund, "outcome": outcome.value,
        "event_id": event_id,
    }).fetchone()
    assert settled is not None  # the event row is ours, claimed above
    if pending:
        transition = _settled(transition, refunded=settled[0] > 0, source=f"webhook:{event_id}")
    return ProcessResult(event_id, outcome, order.id, transition)


def _transition(
    session: Session, order: _Locked, target: OrderStatus, *, source: str
) -> order_status.Transition:
    """What moving the locked `order` to `target` does. A forward move other than COMPLETED
    is left to `_SETTLE` (changed, not yet refunded); COMPLETED needs the order's keys
    counted, so it goes through `order_status.apply` itself, which writes it."""
    if target is OrderStatus.COMPLETED:
        applied = order_status.apply(session, order.id, target, source=source)
        assert applied is not None  # the order is locked, so it exists
        return applied
    if not order_status.allows(order.status, target):
        log.info("order status change ignored", order_id=str(order.id), source=source,
                 current=order.status.value, requested=target.value)
        return order_status.Transition(order.id, order.user_id, order.status, order.status,
                                       changed=False)
    return order_status.Transition(order.id, order.user_id, order.status, target,
                                   changed=True)


def _settled(
    transition: order_status.Transition, *, refunded: bool, source: str
) -> order_status.Transition:
    # The same counters and line as `order_status.apply`, counted before commit like there.
    order_status.ORDER_TRANSITIONS.labels(transition.status.value).inc()
    if refunded:
        order_status.REFUNDS.inc()
    log.info("order status changed", order_id=str(transition.order_id), source=source,
             previous=transition.previous.value, status=transition.status.value,
             refunded=refunded)
    return replace(transition, refunded=refunded)


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
    broker: RedisBroker,
    *,
    min_age_s: float = 30,
    dead_after_s: float = 24 * 3600,
    max_attempts: int = 50,
    limit: int = 500,
    max_requeued: int = 20_000,
) -> SweepResult:
    """Re-enqueue unprocessed events older than `min_age_s` (lost job, broker down, orphan
    whose order may exist now); dead-letter those older than `dead_after_s` or tried
    `max_attempts` times. Dead events stay in the table, visible, with their last error.

    The oldest `limit` are re-sent on every run, whether or not their jobs are still
    queued: a worker that is merely behind gets at most that many harmless duplicates a
    run. Beyond that, as many more as there are stale events than jobs waiting in the
    queue (ready, delayed or in progress), up to `max_requeued`: those events cannot all
    have a job, so a broker outage's stranded backlog is re-sent by the next run, not at
    `limit` a minute. Redis unreadable: `limit`.
    """
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
        stale = (
            WebhookEvent.processed_at.is_(None),
            or_(WebhookEvent.outcome.is_(None), WebhookEvent.outcome != WebhookOutcome.DEAD),
            WebhookEvent.received_at
            < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, min_age_s),
        )
        budget = limit
        waiting = _jobs_waiting(broker)
        if waiting is not None:
            stale_count = session.scalar(select(func.count()).select_from(WebhookEvent)
                                         .where(*stale)) or 0
            budget = min(max(limit, stale_count - waiting), max_requeued)
        event_ids = session.scalars(
            select(WebhookEvent.event_id)
            .where(*stale)
            .order_by(WebhookEvent.received_at)
            .limit(budget)
        ).all()
        for event_id in event_ids:
            enqueue(session, broker, Actor.PROCESS_WEBHOOK_EVENT, event_id)
    if event_ids or dead:
        log.info("webhook sweep", requeued=len(event_ids), dead=len(dead))
    return SweepResult(requeued=len(event_ids), dead=len(dead))


def _jobs_waiting(broker: RedisBroker) -> int | None:
    """Messages of the default queue not yet acknowledged (ready, delayed, in progress), or
    None when Redis cannot say."""
    try:
        depth = BrokerInspector(broker.client, broker.namespace).depth("default")
    except redis.RedisError as exc:
        log.warning("queue depth unavailable; sweeping the minimum", error=str(exc))
        return None
    return depth.ready + depth.delayed + depth.in_progress
