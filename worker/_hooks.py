"""dramatiq's per-message middleware hooks, reduced to the three our middleware needs."""

from __future__ import annotations

import time
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware


class MessageHooks(Middleware):
    """`started` before an actor runs, then `finished` (with its exception, if any) or
    `skipped` (an earlier middleware refused the message; `started` may not have run).

    `elapsed_s` times each message. Start times live here, keyed by message id, not in
    `message.options`: Retries re-enqueues the message (options included) before the
    after-hooks run, so anything stored in the options would travel to Redis and into the
    next attempt (dramatiq's own Prometheus middleware keeps them the same way). The id is a
    sufficient key: a retry keeps it but is enqueued with a delay (Retries' backoff, or the
    actor's Retry delay), so it does not start before this attempt's hooks have run.
    """

    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    def started(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        """Before the actor runs."""

    def finished(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy,
                 exception: BaseException | None) -> None:
        """After the actor returned or raised."""

    def skipped(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        """Instead of `finished`, when the message never reached its actor."""

    def elapsed_s(self, message: dramatiq.MessageProxy) -> float | None:
        """Seconds since `started` (None when it never ran), once per message."""
        started = self._started.pop(message.message_id, None)
        return None if started is None else time.perf_counter() - started

    def before_process_message(self, broker: dramatiq.Broker,
                               message: dramatiq.MessageProxy) -> None:
        self._started[message.message_id] = time.perf_counter()
        self.started(broker, message)

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        self.finished(broker, message, exception)
        self._started.pop(message.message_id, None)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self.skipped(broker, message)
        self._started.pop(message.message_id, None)
