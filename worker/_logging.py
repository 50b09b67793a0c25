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

    def before_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any]
    ) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            actor=message.actor_name,
            message_id=message.message_id,
            retries=message.options.get("retries", 0),
        )
        message.options["_started"] = time.monotonic()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message[Any],
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        started = message.options.pop("_started", None)
        duration_ms = round((time.monotonic() - started) * 1000, 1) if started else None
        if exception is None:
            log.info("job done", duration_ms=duration_ms)
        else:
            log.error("job failed", duration_ms=duration_ms, error=repr(exception))
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> None:
        log.warning("job skipped", actor=message.actor_name, message_id=message.message_id)
        structlog.contextvars.clear_contextvars()
