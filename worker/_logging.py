"""Logging in the worker: our configuration in every worker process, context bound per
message (actor, message id, retries), and one line per message with its outcome."""

from __future__ import annotations

import dramatiq
import structlog

from keysync.logging import configure_logging
from keysync.settings import get_settings
from worker._hooks import MessageHooks

log = structlog.get_logger("worker")


class LoggingContextMiddleware(MessageHooks):
    """Every log line of a job carries `actor`, `message_id` and `retries`, and each message
    ends with exactly one line saying what became of it:

    - `job done` (info);
    - `job deferred` (info): the actor raised `dramatiq.Retry` (an expected wait, such as a
      full sync finding the sync lock held), with its reason and delay;
    - `job failed` (error, with the traceback): an exception Retries will retry;
    - `job dead-lettered` (error, `alert=job_dead_lettered`): Retries gave up (retries
      exhausted, or an exception the actor `throws`), so the message sits in the dead-letter
      set until an operator retries or discards it (`keysync jobs`);
    - `job skipped` (warning): an earlier middleware refused it (too old, say).

    It also configures logging (LOG_FORMAT, LOG_LEVEL) in each worker process as it boots:
    `dramatiq` starts its worker processes with their output redirected to a pipe and,
    under `--skip-logging`, no handler at all, so without this they would print structlog's
    default console lines at every level whatever the settings say.
    """

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        settings = get_settings()
        configure_logging(settings.log_format, settings.log_level)

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
        # Bound again (not only from the context): an earlier middleware may have failed the
        # message before `started` bound anything. `retries` is this attempt's, from the
        # context: Retries has already counted it in the options by now.
        bound = log.bind(actor=message.actor_name, message_id=message.message_id,
                         duration_ms=duration_ms)
        if exception is None:
            bound.info("job done")
        elif message.failed:
            # Retries' after-hook ran before ours (see the middleware order in
            # `worker.broker`) and failed the message: it goes to the dead-letter set.
            expected = _thrown(broker, message, exception)
            bound.error("job dead-lettered", alert="job_dead_lettered",
                        last_error=_describe(exception),
                        exc_info=None if expected else exception)
        elif isinstance(exception, dramatiq.Retry):
            bound.info("job deferred", reason=str(exception) or None,
                       retry_in_ms=exception.delay)
        else:
            bound.error("job failed", error=_describe(exception), exc_info=exception)
        structlog.contextvars.clear_contextvars()

    def skipped(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        log.warning("job skipped", actor=message.actor_name, message_id=message.message_id)
        structlog.contextvars.clear_contextvars()


def _thrown(broker: dramatiq.Broker, message: dramatiq.MessageProxy,
            exception: BaseException) -> bool:
    """Whether the actor declares `exception` in `throws`: a reason it gave, not a bug, so
    its traceback says nothing an operator needs (a `dramatiq.Retry` neither)."""
    if isinstance(exception, dramatiq.Retry):
        return True
    throws = message.options.get("throws")
    if not throws:
        try:
            throws = broker.get_actor(message.actor_name).options.get("throws")
        except dramatiq.ActorNotFound:
            return False
    return throws is not None and isinstance(exception, throws)


def _describe(exception: BaseException) -> str:
    """`Class: first line of the message`, the form `keysync jobs` shows as last_error."""
    text = str(exception).strip().splitlines()
    return f"{type(exception).__name__}: {text[0]}" if text else type(exception).__name__
