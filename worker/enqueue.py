"""The one way a write path sends a job: `enqueue` inside its transaction, sent after commit.

`enqueue(session, broker, Actor.X, *args)` stages the job in the caller's open transaction
(a `job_outbox` row, see `services.job_outbox`) and remembers it on the session; a listener
sends it once the outermost transaction has committed and its connection is back in the
pool (so dispatch never holds two pooled connections). A rollback, or a savepoint rolled
back around the call, forgets it together with the row. Sending never raises into the
caller: the change is committed either way, and a job the broker refused stays in the
outbox for the scheduled `relay_job_outbox`.

`send_now` is the one other way, for the caller that must know at once whether the broker
took a message (login runs the guest migration inline when it did not); `send_many_now` is
its pipelined form for the web's sender of swept jobs.

The broker is an argument like every other dependency of a service, so a test (or a
process) can hand a write path a dead broker. Actor names are `Actor` members: a misspelt
name is an AttributeError at import, and `tests/worker/test_enqueue.py` checks the enum
against the actors `jobs` declares, both ways.

This module stays import-light (no settings, no broker binding): services import it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final
from uuid import uuid4

import dramatiq
import structlog
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis
from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, SessionTransaction

from services import job_outbox
from services.job_outbox import Arg as Arg  # re-exported: actor arguments

log = structlog.get_logger(__name__)


class Actor(enum.StrEnum):
    """Every actor `jobs` declares (dramatiq names them after their functions)."""

    CATALOG_SYNC = "catalog_sync"
    STOCK_CHECK = "stock_check"
    FULFIL_ORDER = "fulfil_order"
    POLL_ORDER_STATUS = "poll_order_status"
    PROCESS_WEBHOOK_EVENT = "process_webhook_event"
    SWEEP_WEBHOOK_EVENTS = "sweep_webhook_events"
    MIGRATE_GUEST_DATA = "migrate_guest_data"
    SEND_EMAIL = "send_email"
    REPLAY_CACHE_OUTBOX = "replay_cache_outbox"
    RELAY_JOB_OUTBOX = "relay_job_outbox"


# Actors whose every message stands for a row the caller commits anyway and that a sweeper
# re-sends while it is unprocessed (`webhook_events`, swept every minute): an outbox row
# would record the same thing twice and cost two more round trips on the hottest write
# path. Their message is sent after commit all the same; a refused one waits for the sweeper.
SWEPT_FROM_OWN_TABLE: Final = frozenset({Actor.PROCESS_WEBHOOK_EVENT})

_INFO_KEY: Final = "keysync.enqueue"


@dataclass(eq=False)
class _Job:
    broker: dramatiq.Broker
    actor: Actor
    args: tuple[Arg, ...]
    outbox_id: int | None
    # The (sub)transaction whose commit makes the job real: released savepoints hand their
    # jobs to the enclosing transaction, rolled-back ones never reach the root.
    owner: SessionTransaction


@dataclass(eq=False)
class _Pending:
    bind: Engine | Connection
    jobs: list[_Job] = field(default_factory=list)
    committed: list[_Job] = field(default_factory=list)


def enqueue(session: Session, broker: dramatiq.Broker, actor: Actor, *args: Arg) -> None:
    """Inside the caller's transaction: send `actor(*args)` once that transaction commits."""
    if not isinstance(actor, Actor):
        raise TypeError(f"enqueue() takes an Actor member, not {actor!r}")
    if not session.in_transaction():
        raise RuntimeError(
            f"enqueue({actor}) needs an open transaction: the job is sent when it commits"
        )
    outbox_id = None
    if actor not in SWEPT_FROM_OWN_TABLE:
        outbox_id = job_outbox.stage(session, actor.value, *args)
    owner = session.get_nested_transaction() or session.get_transaction()
    assert owner is not None  # in_transaction() above
    pending = session.info.get(_INFO_KEY)
    if pending is None:
        pending = session.info[_INFO_KEY] = _Pending(session.get_bind())
    pending.jobs.append(_Job(broker, actor, args, outbox_id, owner))


def send_now(broker: dramatiq.Broker, actor: Actor, *args: Arg) -> None:
    """Send at once, outside any transaction; raises when the broker refuses.

    Only for a caller that needs the broker's answer now and has its own fallback (login's
    guest migration runs inline instead). Everything else uses `enqueue`.
    """
    if not isinstance(actor, Actor):
        raise TypeError(f"send_now() takes an Actor member, not {actor!r}")
    job_outbox.send(broker, actor.value, *args)


# --- after commit ---------------------------------------------------------------------------
#
# Registered on the Session class: the listeners act only on sessions whose `info` holds
# jobs, which only `enqueue` puts there, so there is nothing to install per sessionmaker
# and no session factory can silently leave its jobs to the relay.


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    pending: _Pending | None = session.info.get(_INFO_KEY)
    if pending is None:
        return
    nested = session.get_nested_transaction()
    if nested is not None:  # a savepoint released: its jobs now follow the enclosing one
        parent = nested.parent
        assert parent is not None  # a savepoint always sits inside a transaction
        for job in pending.jobs:
            if job.owner is nested:
                job.owner = parent
        return
    root = session.get_transaction()
    pending.committed = [job for job in pending.jobs if job.owner is root]


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # Fires once the connection has gone back to the pool; for the root, commit or not.
    if transaction.parent is not None:
        return
    pending: _Pending | None = session.info.pop(_INFO_KEY, None)
    if pending is not None and pending.committed:
        _send(pending.bind, pending.committed)


def _send(bind: Engine | Connection, jobs: list[_Job]) -> None:
    """Hand committed jobs to their broker; never raises (the change is already committed)."""
    brokers: list[dramatiq.Broker] = []
    for job in jobs:
        if not any(job.broker is b for b in brokers):
            brokers.append(job.broker)
    for broker in brokers:
        mine = [job for job in jobs if job.broker is broker]
        ids = [job.outbox_id for job in mine if job.outbox_id is not None]
        if ids:
            try:
                job_outbox.dispatch(partial(Session, bind=bind), broker, ids)
            except Exception as exc:  # Postgres gone between commit and dispatch
                log.warning("job dispatch failed; left in the outbox for the relay",
                            actors=sorted({job.actor.value for job in mine}), outbox_ids=ids,
                            error=str(exc))
        for job in mine:
            if job.outbox_id is not None:
                continue
            try:
                job_outbox.send(broker, job.actor.value, *job.args)
            except Exception as exc:
                # The rest would meet the same broker: leave them all to the sweeper.
                log.warning("broker unavailable; job left for its sweeper",
                            actor=job.actor.value, error=str(exc))
                break


# What dramatiq's `dispatch.lua` takes before a command's own arguments: command, timestamp,
# queue, broker id, heartbeat timeout, dead-message ttl, whether to do maintenance, max
# unpack size (read by `fetch` only). `tests/worker/test_enqueue.py` holds `send_many_now`
# to what `broker.enqueue` stores, so a dramatiq that changes this fails there first.
_NO_MAINTENANCE: Final = 0
_UNUSED_UNPACK_SIZE: Final = 1


def send_many_now(broker: RedisBroker, actor: Actor, args_list: Sequence[Sequence[Arg]]) -> None:
    """`send_now` for many jobs of one actor, in order, in one Redis round trip.

    Each message is what `broker.enqueue` stores (dramatiq's own enqueue script, once per
    message, the broker's enqueue hooks around each), only pipelined: for a thread sharing
    the interpreter lock with a busy event loop, one round trip per job caps its rate (the
    web's `SweptJobSender`). Raises when Redis refuses; then some of the jobs may have been
    stored, so it is only for actors whose sweeper re-sends what is missing.
    """
    if actor not in SWEPT_FROM_OWN_TABLE:
        raise ValueError(f"{actor} has no sweeper: send it with enqueue")
    dispatch_script = broker.scripts["dispatch"]
    keys = [broker.namespace]
    messages: list[Message[Any]] = []
    with broker.client.pipeline(transaction=False) as pipe:
        for args in args_list:
            message: Message[Any] = Message(
                queue_name="default", actor_name=actor.value, args=tuple(args),
                kwargs={}, options={"redis_message_id": str(uuid4())})
            broker.emit_before("enqueue", message, None)
            dispatch_script(keys=keys, client=pipe, args=[
                "enqueue", current_millis(), message.queue_name, broker.broker_id,
                broker.heartbeat_timeout, broker.dead_message_ttl, _NO_MAINTENANCE,
                _UNUSED_UNPACK_SIZE, message.options["redis_message_id"], message.encode()])
            messages.append(message)
        pipe.execute()
    for message in messages:
        broker.emit_after("enqueue", message, None)
