"""Broker messages for operators: list queued, delayed and dead jobs; retry or discard dead
letters (CONTRACT §8 `keysync jobs`).

Redis does the moving (`worker.inspect.DeadLetters`, atomic per message); Postgres keeps
the record (`audit`), written after Redis answered, with what was really moved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import redis
from sqlalchemy.orm import Session, sessionmaker

from services.ops import audit
from services.ops.errors import OpsInputError, UnknownIds, check_page
from services.ops.schemas import DiscardResult, JobList, JobState, JobView, RetryResult
from worker.inspect import BrokerInspector, BrokerMessage, DeadLetters, Repair, State


def list_jobs(broker_redis: redis.Redis, *, state: JobState | None = None,
              actor: str | None = None, limit: int = 50, offset: int = 0) -> JobList:
    """Messages of every queue, newest first (dead letters by when they died)."""
    check_page(limit, offset)
    states = tuple(State) if state is None else (State(state.value),)
    page = BrokerInspector(broker_redis).search(states, actor=actor or None, offset=offset,
                                                limit=limit)
    return JobList(items=[_view(m) for m in page.items], total=page.total)


def _view(message: BrokerMessage) -> JobView:
    return JobView(
        message_id=message.message_id, queue=message.queue, actor=message.actor,
        args=message.args, kwargs=message.kwargs, state=JobState(message.state.value),
        enqueued_at=message.enqueued_at, retries=message.retries,
        failed_at=message.failed_at, last_error=message.last_error,
    )


def _selection(ids: Sequence[str], all_: bool) -> list[str] | None:
    if all_ == bool(ids):
        raise OpsInputError("give dead-letter ids or --all, not both and not neither")
    return None if all_ else list(dict.fromkeys(ids))


def _audited(sessions: sessionmaker[Session], repair: Repair, *, actor: str, action: str,
             ids: list[str] | None, actor_filter: str | None) -> None:
    target = "dead letters: " + ("all" if ids is None else ", ".join(ids))
    if actor_filter:
        target += f" of {actor_filter}"
    with sessions() as session, session.begin():
        row = audit.record(session, actor=actor, action=action, target=target, detail={
            "count": repair.count, "actor_filter": actor_filter,
            **audit.ids_detail(repair.message_ids),
        })
    audit.announce(row)


def retry(sessions: sessionmaker[Session], broker_redis: redis.Redis, *, actor: str,
          ids: Sequence[str] = (), all_: bool = False,
          actor_filter: str | None = None) -> RetryResult:
    """Re-enqueue dead letters (each leaves the dead set exactly once); audited."""
    repair = _repair(sessions, DeadLetters(broker_redis).retry, "jobs.retry", actor=actor,
                     ids=ids, all_=all_, actor_filter=actor_filter)
    return RetryResult(retried=repair.count)


def discard(sessions: sessionmaker[Session], broker_redis: redis.Redis, *, actor: str,
            ids: Sequence[str] = (), all_: bool = False,
            actor_filter: str | None = None) -> DiscardResult:
    """Delete dead letters for good; audited."""
    repair = _repair(sessions, DeadLetters(broker_redis).discard, "jobs.discard", actor=actor,
                     ids=ids, all_=all_, actor_filter=actor_filter)
    return DiscardResult(discarded=repair.count)


def _repair(sessions: sessionmaker[Session],
            operation: Callable[..., Repair], action: str, *, actor: str,
            ids: Sequence[str], all_: bool, actor_filter: str | None) -> Repair:
    """Check the operator, apply `operation` to the selected dead letters, then audit it;
    ids that are not dead letters refuse the whole call before anything is audited."""
    actor = audit.check_actor(actor)
    wanted = _selection(ids, all_)
    repair = operation(wanted, actor=actor_filter or None)
    if repair.not_found:
        raise UnknownIds("dead letters" + (f" of {actor_filter}" if actor_filter else ""),
                         repair.not_found)
    _audited(sessions, repair, actor=actor, action=action, ids=wanted,
             actor_filter=actor_filter)
    return repair
