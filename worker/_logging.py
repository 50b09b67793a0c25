"""Binds structlog context (actor, message id, retries) for every message a worker handles."""

from __future__ import annotations

import time
from typing import Any

import dramatiq
import structlog
from dramatiq.middleware import Middleware

log = structlog.get_logger("worker")


class LoggingContextMiddleware(Middleware):
    """Every log line of a job carries `actor`, `message_id` and `retries`, and each job
    logs one line when it finishes with its outcome and duration."""

    def __init__(self) -> None:
        # Start times live here, not in `message.options`: Retries re-enqueues the message
        # (options included) before our after-hook runs, so anything stored in the options
        # would travel to Redis and into the next attempt. The message id is a sufficient
        # key: a retry keeps the id but is enqueued with a delay (Retries' backoff, or the
        # actor's Retry delay), so it does not start before this attempt's hooks have run.
        self._started: dict[str, float] = {}

    def before_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.MessageProxy
    ) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            actor=message.actor_name,
            message_id=message.message_id,
            retries=message.options.get("retries", 0),
        )
        self._started[message.message_id] = time.monotonic()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        started = self._started.pop(message.message_id, None)
        # None when an earlier middleware failed the message before our before-hook ran.
        duration_ms = (
            round((time.monotonic() - started) * 1000, 1) if started is not None else None
        )
        if exception is None:
            log.info("job done", duration_ms=duration_ms)
        else:
            log.error("job failed", duration_ms=duration_ms, error=repr(exception))
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._started.pop(message.message_id, None)
        log.warning("job skipped", actor=message.actor_name, message_id=message.message_id)
        structlog.contextvars.clear_contextvars()
