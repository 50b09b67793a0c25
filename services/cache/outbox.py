"""Postgres outbox of cache invalidations that could not reach Redis (`cache_invalidations`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import CacheInvalidation

log = structlog.get_logger(__name__)


class CacheOutbox:
    def __init__(self, session_factory: sessionmaker[Session], *, batch_size: int = 1000) -> None:
        self._sessions = session_factory
        self._batch_size = batch_size

    def record(self, targets: Sequence[str], *, is_pattern: bool) -> None:
        with self._sessions() as session, session.begin():
            session.execute(
                insert(CacheInvalidation),
                [{"target": t, "is_pattern": is_pattern} for t in targets],
            )

    def pending(self) -> int:
        with self._sessions() as session:
            return int(session.scalar(select(func.count()).select_from(CacheInvalidation)) or 0)

    def replay(self, apply: Callable[[list[str], list[str]], object]) -> int:
        """Apply (`apply(keys, patterns)`, the cache's own invalidation, raising while Redis
        is down) and delete pending rows in batches; rows another replayer holds are skipped.

        Rows are deleted in the same transaction that applied them, after Redis accepted
        them, so a crash mid-replay applies a row twice (harmless) but never loses it.
        """
        replayed = 0
        while True:
            with self._sessions() as session, session.begin():
                rows = session.execute(
                    select(
                        CacheInvalidation.id, CacheInvalidation.target, CacheInvalidation.is_pattern
                    )
                    .order_by(CacheInvalidation.id)
                    .limit(self._batch_size)
                    .with_for_update(skip_locked=True)
                ).all()
                if not rows:
                    break
                apply([r.target for r in rows if not r.is_pattern],
                      [r.target for r in rows if r.is_pattern])
                session.execute(
                    delete(CacheInvalidation).where(CacheInvalidation.id.in_([r.id for r in rows]))
                )
                replayed += len(rows)
        if replayed:
            log.info("cache outbox replayed", invalidations=replayed)
        return replayed
