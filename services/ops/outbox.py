"""`keysync outbox relay`: send the job outbox and replay the cache outbox now, instead of
waiting for their scheduled sweepers (every minute / every 10 s).

Jobs go through `job_outbox.dispatch`, the path every after-commit send takes (rows locked,
sent in id order, deleted once the broker took them), in windows, up to the newest row that
existed when the relay started, so a busy shop cannot keep it going. Cache invalidations go
through the cache's own replay. One audit row says what was done.
"""

from __future__ import annotations

from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import JobOutbox
from services import job_outbox
from services.cache import Cache
from services.ops import audit
from services.ops.schemas import RelayResult

WINDOW = 500


def relay_now(sessions: sessionmaker[Session], broker: RedisBroker, cache: Cache, *,
              actor: str) -> RelayResult:
    """Raises redis errors when the broker is unreachable (nothing sent) and
    `CacheUnavailable` when the cache's Redis is (jobs sent, and recorded, first)."""
    actor = audit.check_actor(actor)
    # Refused sends are swallowed by dispatch (the rows stay): ask the broker first, so a
    # dead one is reported as such rather than as "0 sent".
    broker.client.ping()
    jobs_sent = _send_jobs(sessions, broker)
    invalidations = 0
    error: str | None = None
    try:
        invalidations = cache.replay_outbox()
    except Exception as exc:
        error = f"cache invalidations not replayed: {exc}"
        raise
    finally:
        with sessions() as session, session.begin():
            row = audit.record(session, actor=actor, action="outbox.relay", target="outboxes",
                               detail={"jobs_sent": jobs_sent,
                                       "invalidations_applied": invalidations,
                                       **({"error": error} if error else {})})
        audit.announce(row)
    return RelayResult(jobs_sent=jobs_sent, invalidations_applied=invalidations)


def _send_jobs(sessions: sessionmaker[Session], broker: RedisBroker) -> int:
    with sessions() as session:
        newest = session.scalar(select(JobOutbox.id).order_by(JobOutbox.id.desc()).limit(1))
    sent, after = 0, 0
    while newest is not None:
        with sessions() as session:
            ids = list(session.scalars(
                select(JobOutbox.id).where(JobOutbox.id > after, JobOutbox.id <= newest)
                .order_by(JobOutbox.id).limit(WINDOW)
            ).all())
        if not ids:
            break
        accepted = job_outbox.dispatch(sessions, broker, ids)
        sent += accepted
        if accepted == 0:  # the broker refused the first one: the rest would meet it too
            break
        after = ids[-1]
    return sent
