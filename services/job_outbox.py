"""Transactional outbox for jobs that must not be lost (fulfilment, welcome email, ...).

The table mechanics under `worker.enqueue`, which is what write paths call (it stages
here and dispatches after commit). `stage` writes the message in the same Postgres
transaction as the change that needs it; `dispatch` hands staged messages to the broker
after commit and deletes them once accepted. If the broker is down (or the process dies
between commit and dispatch), the rows stay and `relay` (run by the scheduler every
minute) sends them later. A message may therefore be delivered more than once; every
actor fed through here is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import dramatiq
import structlog
from dramatiq import Message
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import JobOutbox

log = structlog.get_logger(__name__)

# Actor arguments travel as JSON (outbox column and dramatiq message alike); anything else
# (a UUID, a Decimal) is a type error here rather than a failed insert or a lost message.
Arg: TypeAlias = str | int | float | bool | None


def stage(session: Session, actor_name: str, *args: Arg, queue_name: str = "default") -> int:
    """Inside the caller's transaction: record a message to send after commit."""
    row_id = session.execute(
        insert(JobOutbox)
        .values(actor_name=actor_name, queue_name=queue_name, args=list(args))
        .returning(JobOutbox.id)
    ).scalar_one()
    return int(row_id)


def _message(actor_name: str, queue_name: str, args: Sequence[Any]) -> Message[Any]:
    return Message(
        queue_name=queue_name, actor_name=actor_name, args=tuple(args), kwargs={}, options={}
    )


def send(broker: dramatiq.Broker, actor_name: str, *args: Arg, queue_name: str = "default") -> None:
    """Enqueue directly, no outbox (write paths use `worker.enqueue.send_now`, typed)."""
    broker.enqueue(_message(actor_name, queue_name, args))


def dispatch(sessions: Callable[[], Session], broker: dramatiq.Broker, ids: Sequence[int]) -> int:
    """After commit: send the staged messages `ids`; returns how many the broker accepted.

    One transaction for the batch: the rows are locked (a concurrent relay skips them),
    sent in id order, and the sent ones deleted. The first refusal stops the batch, since
    the rest would meet the same broker; what is left waits for `relay`.
    """
    if not ids:
        return 0
    sent: list[int] = []
    with sessions() as session, session.begin():
        rows = session.execute(
            select(JobOutbox)
            .where(JobOutbox.id.in_(list(ids)))
            .order_by(JobOutbox.id)
            .with_for_update(skip_locked=True)  # rows gone or locked: relayed by the sweeper
        ).scalars().all()
        for row in rows:
            try:
                broker.enqueue(_message(row.actor_name, row.queue_name, row.args))
            except Exception as exc:
                # Leave the row for the sweeper; the caller's change is committed either way.
                log.warning(
                    "broker unavailable; job left in outbox",
                    actor=row.actor_name,
                    outbox_id=row.id,
                    error=str(exc),
                )
                session.execute(
                    update(JobOutbox)
                    .where(JobOutbox.id == row.id)
                    .values(attempts=JobOutbox.attempts + 1)
                )
                break
            sent.append(row.id)
        if sent:
            session.execute(delete(JobOutbox).where(JobOutbox.id.in_(sent)))
    return len(sent)


def relay(
    sessions: sessionmaker[Session],
    broker: dramatiq.Broker,
    *,
    min_age_s: float = 5,
    limit: int = 500,
) -> int:
    """Sweeper: send outbox rows older than `min_age_s` (their dispatch failed or never ran)."""
    with sessions() as session:
        ids = session.scalars(
            select(JobOutbox.id)
            .where(
                JobOutbox.created_at
                < text("now() - make_interval(secs => :age)").bindparams(age=min_age_s)
            )
            .order_by(JobOutbox.id)
            .limit(limit)
        ).all()
    sent = dispatch(sessions, broker, ids)
    if ids:
        log.info("job outbox relayed", pending=len(ids), sent=sent)
    return sent
