"""Binds structlog context (actor, message id, retries) for every message a worker handles."""

from __future__ import annotations

import dramatiq
import structlog

from worker._hooks import MessageHooks

log = structlog.get_logger("worker")


class LoggingContextMiddleware(MessageHooks):
    """Every log line of a job carries `actor`, `message_id` and `retries`, and each job
    logs one line when it finishes with its outcome and duration."""

    def started(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            actor=message.actor_name,
            message_id=message.message_id,
            retries=message.options.get("retries", 0),
        )

    def finished(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy,
                 exception: BaseException | None) -> None:
        elapsed = self.elapsed_s(message)
        # None when an earlier middleware failed the message before our before-hook ran.
        duration_ms = round(elapsed * 1000, 1) if elapsed is not None else None
        if exception is None:
            log.info("job done", duration_ms=duration_ms)
        else:
            log.error("job failed", duration_ms=duration_ms, error=repr(exception))
        structlog.contextvars.clear_contextvars()

    def skipped(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        log.warning("job skipped", actor=message.actor_name, message_id=message.message_id)
        structlog.contextvars.clear_contextvars()
