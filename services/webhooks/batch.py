"""Group commit for `process_webhook_event` inside one worker process.

Each worker thread hands its event to the process's `EventBatcher` and waits. While no batch
is running, an arriving thread leads one at once with every event waiting (itself
included); events arriving meanwhile wait and go together in the next batch. Alone, an
event is processed at once, as before; under load, one transaction (one pool check-out,
BEGIN, COMMIT and one cache invalidation) serves many events instead of one each, which
is most of what an event cost Postgres and the worker.

Exactness is unchanged: a batch is `service.process_events`, the very statements an
event runs alone, in one transaction, so every event of a batch is applied and marked
processed together or not at all. A thread returns (and dramatiq acknowledges its message)
only after the batch holding its event committed and invalidated the cache. When a batch
fails (one bad event, a deadlock with another process, Postgres gone) nothing of it was
applied, and each of its threads processes its own event alone, recording its own error
and failing or succeeding on its own, exactly as without batching.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import dramatiq
import structlog
from sqlalchemy.orm import Session, sessionmaker

from services.cache import Cache
from services.metrics import WEBHOOK_BATCH_EVENTS
from services.webhooks import service
from services.webhooks.schemas import WebhookOutcome

log = structlog.get_logger(__name__)


@dataclass(slots=True, eq=False)
class _Waiter:
    event_id: str
    woken: threading.Event = field(default_factory=threading.Event)
    leads: bool = False  # woken to lead the next batch, not with a result
    result: service.ProcessResult | None = None  # woken without one: process alone


class EventBatcher:
    """One per worker process; `process` is called by that process's worker threads."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        broker: dramatiq.Broker,
        cache: Cache,
        *,
        max_batch: int = 64,
    ) -> None:
        self._sessions = sessions
        self._broker = broker
        self._cache = cache
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: list[_Waiter] = []
        self._leading = False

    @property
    def waiting(self) -> int:
        """Events queued for the next batch (what tests and the curious look at)."""
        with self._lock:
            return len(self._waiting)

    def process(self, event_id: str) -> service.ProcessResult:
        """`service.process_event`, grouped with the events of other threads."""
        me = _Waiter(event_id)
        with self._lock:
            me.leads = not self._leading
            self._leading = True
            if not me.leads:
                self._waiting.append(me)
        try:
            if not me.leads:
                me.woken.wait()  # by a leader: with a result, or to lead the next batch
            if me.leads:
                with self._lock:
                    batch = [me, *self._waiting[: self._max_batch - 1]]
                    del self._waiting[: self._max_batch - 1]
                if len(batch) == 1:
                    # Alone: exactly as without batching, while newcomers queue behind it.
                    return service.process_event(self._sessions, self._broker, self._cache,
                                                 event_id)
                self._run(batch)
        finally:
            self._leave(me)
        if me.result is None:
            return service.process_event(self._sessions, self._broker, self._cache, event_id)
        service.log_handled(me.result)
        return me.result

    def _leave(self, me: _Waiter) -> None:
        """A leader wakes the first waiting thread to lead the next batch (or stops
        leading). Also runs when a thread is interrupted (a time limit) while waiting, so
        that it is never handed a batch it will not run."""
        with self._lock:
            if me in self._waiting:
                self._waiting.remove(me)
            if not me.leads:
                return
            if not self._waiting:
                self._leading = False
                return
            heir = self._waiting.pop(0)
            heir.leads = True
        heir.woken.set()

    def _run(self, batch: list[_Waiter]) -> None:
        try:
            self._apply(batch)
        finally:
            # Whatever got no result (a failed batch, the leader interrupted by a time
            # limit) is processed by its own thread.
            for waiter in batch[1:]:
                waiter.woken.set()

    def _apply(self, batch: list[_Waiter]) -> None:
        # Sorted, so two batches lock the event rows they share in the same order.
        event_ids = sorted({waiter.event_id for waiter in batch})
        WEBHOOK_BATCH_EVENTS.observe(len(event_ids))
        try:
            results = service.process_events(
                self._sessions, self._broker, self._cache, event_ids
            )
        except Exception as exc:
            log.warning("webhook batch failed; its events are processed one by one",
                        events=len(event_ids), error=repr(exc)[:500])
            return
        first: set[str] = set()
        for waiter in batch:
            if waiter.event_id in first:  # the same event twice: the second found it done
                waiter.result = service.ProcessResult(waiter.event_id, WebhookOutcome.ALREADY)
            else:
                first.add(waiter.event_id)
                waiter.result = results[waiter.event_id]
