"""The webhook inbox for operators: list events by outcome, replay them (CONTRACT §8
`keysync webhooks`).

Outcomes: the stored `WebhookOutcome` (processed, ignored, orphan, dead), or `pending` when
none is stored yet (never handled, or its last attempt raised: `last_error` says why).

A replay resets an unprocessed event (outcome cleared, attempts back to 0: the sweeper's
50-attempt bound starts over) and enqueues `process_webhook_event` for it in the same
transaction, so the existing processing path applies it exactly once. Processed and ignored
events are left alone (their effect, if any, has happened), which makes replaying
idempotent: the second replay of an event finds it processed and does nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dramatiq
from sqlalchemy import ColumnElement, and_, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import AdminAction, WebhookEvent
from services.ops import audit
from services.ops.errors import OpsInputError, UnknownIds, check_page
from services.ops.schemas import (
    InboxOutcome,
    ReplayResult,
    WebhookEventView,
    WebhookList,
)
from services.webhooks.schemas import WebhookOutcome
from worker.enqueue import Actor, enqueue

# Dead events reset per transaction by `replay(dead=True)`.
REPLAY_BATCH = 500


def outcome_filter(outcome: InboxOutcome) -> ColumnElement[bool]:
    if outcome is InboxOutcome.PENDING:
        return WebhookEvent.outcome.is_(None)
    return WebhookEvent.outcome == outcome.value


def _outcome(event: WebhookEvent) -> InboxOutcome:
    if event.outcome is None:
        # Written before outcomes were stored: processed_at alone tells.
        return InboxOutcome.PROCESSED if event.processed_at else InboxOutcome.PENDING
    return InboxOutcome(event.outcome)


def event_view(event: WebhookEvent) -> WebhookEventView:
    data: dict[str, Any] = event.payload.get("data") or {}
    return WebhookEventView(
        event_id=event.event_id, type=event.type,
        order_id=str(data["order_id"]) if data.get("order_id") else None,
        external_order_id=(str(data["external_order_id"])
                           if data.get("external_order_id") else None),
        status=str(data.get("status", "")), received_at=event.received_at,
        processed_at=event.processed_at, outcome=_outcome(event), attempts=event.attempts,
        last_error=event.last_error,
    )


def get_event(session: Session, event_id: str
              ) -> tuple[WebhookEventView, dict[str, Any]] | None:
    """One event and its stored body (what the sender signed: type and data, no header,
    no secret); None for an unknown id."""
    event = session.scalar(select(WebhookEvent).where(WebhookEvent.event_id == event_id))
    return None if event is None else (event_view(event), event.payload)


def list_events(session: Session, *, outcome: InboxOutcome | None = None, limit: int = 50,
                offset: int = 0) -> WebhookList:
    """The inbox, newest first (indexed on (outcome, received_at))."""
    check_page(limit, offset)
    where = [] if outcome is None else [outcome_filter(outcome)]
    rows = session.scalars(
        select(WebhookEvent).where(*where)
        .order_by(WebhookEvent.received_at.desc(), WebhookEvent.id.desc())
        .offset(offset).limit(limit)
    ).all()
    total = session.scalar(select(func.count()).select_from(WebhookEvent).where(*where)) or 0
    return WebhookList(items=[event_view(r) for r in rows], total=int(total))


def _reset(session: Session, broker: dramatiq.Broker, condition: ColumnElement[bool],
           limit: int | None = None) -> list[tuple[int, str]]:
    """Reset the unprocessed events matching `condition` and enqueue each (after commit);
    their (row id, event id)s."""
    chosen = (
        select(WebhookEvent.id)
        .where(condition, WebhookEvent.processed_at.is_(None))
        .order_by(WebhookEvent.id)
        .with_for_update(skip_locked=limit is not None)
    )
    if limit is not None:
        chosen = chosen.limit(limit)
    reset = [(row_id, event_id) for row_id, event_id in session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id.in_(chosen.scalar_subquery()))
        .values(outcome=None, attempts=0)
        .returning(WebhookEvent.id, WebhookEvent.event_id)
    ).all()]
    for _, event_id in reset:
        enqueue(session, broker, Actor.PROCESS_WEBHOOK_EVENT, event_id)
    return reset


def replay(sessions: sessionmaker[Session], broker: dramatiq.Broker, *, actor: str,
           event_ids: Sequence[str] = (), dead: bool = False) -> ReplayResult:
    """Reset and re-process the given events, or every dead one; one audit row."""
    actor = audit.check_actor(actor)
    if dead == bool(event_ids):
        raise OpsInputError("give event ids or --dead, not both and not neither")
    if dead:
        return _replay_dead(sessions, broker, actor)
    wanted = list(dict.fromkeys(event_ids))
    with sessions() as session, session.begin():
        known = set(session.scalars(
            select(WebhookEvent.event_id).where(WebhookEvent.event_id.in_(wanted))
        ).all())
        missing = [e for e in wanted if e not in known]
        if missing:
            raise UnknownIds("webhook events", missing)
        replayed = [e for _, e in _reset(session, broker, WebhookEvent.event_id.in_(wanted))]
        row = audit.record(session, actor=actor, action="webhooks.replay",
                           target="webhook events: " + ", ".join(wanted),
                           detail={"count": len(replayed), "requested": len(wanted),
                                   **audit.ids_detail(replayed)})
    audit.announce(row)
    return ReplayResult(replayed=len(replayed))


def _replay_dead(sessions: sessionmaker[Session], broker: dramatiq.Broker,
                 actor: str) -> ReplayResult:
    """Every dead event, REPLAY_BATCH per transaction (never the whole table at once). The
    audit row is written with the first batch and brought up to date with each next one,
    so it always says what has been committed."""
    replayed: list[str] = []
    row_id: int | None = None
    last_id = 0
    while True:
        with sessions() as session, session.begin():
            condition = and_(WebhookEvent.outcome == WebhookOutcome.DEAD.value,
                             WebhookEvent.id > last_id)
            batch = _reset(session, broker, condition, limit=REPLAY_BATCH)
            last_id = max([last_id, *(row_id for row_id, _ in batch)])
            replayed += [event_id for _, event_id in batch]
            detail = {"count": len(replayed), **audit.ids_detail(replayed)}
            if row_id is None:
                row = audit.record(session, actor=actor, action="webhooks.replay",
                                   target="webhook events: all dead", detail=detail)
                row_id = row.id
            else:
                session.execute(update(AdminAction).where(AdminAction.id == row_id)
                                .values(detail=detail))
        if len(batch) < REPLAY_BATCH:
            break
    with sessions() as session:
        final = session.get(AdminAction, row_id)
        assert final is not None
        audit.announce(final)
    return ReplayResult(replayed=len(replayed))
