"""structlog configuration: console or JSON (LOG_FORMAT), context bound per job/request.

Every process (web, worker, scheduler, CLI) calls `configure_logging` once: structlog's
lines and the standard library's (dramatiq's, uvicorn's with `log_config=None`, APScheduler's)
go through the same root handler and renderer, with one timestamp format (ISO 8601, UTC).

Secrets are never passed to loggers; as a second line of defence the `_redact` processor
masks values of keys that look like credentials, whatever the caller bound.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.types import EventDict

_SECRET_WORDS = (
    "password",
    "secret",
    "token",
    "authorization",
    "api_hash",
    "key_encrypted",
    "game_key",
    "smtp_url",
    "jwt",
)


def _redact(_: Any, __: str, event: EventDict) -> EventDict:
    for name in event:
        lowered = name.lower()
        if any(word in lowered for word in _SECRET_WORDS) and name != "event":
            event[name] = "***"
    return event


# One list object for the life of the process, refilled by every `configure_logging`:
# loggers cached on first use keep a reference to the list they were built with, so a
# second configuration (the CLI's, a test's) must change that list, not replace it, or
# those loggers would keep the old processors (and structlog's `capture_logs`, which edits
# the configured list in place, would not see them).
_PROCESSORS: list[structlog.types.Processor] = []


def configure_logging(log_format: str = "console", level: str = "INFO") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            # rich's pretty tracebacks take ~2 s to render; a 500 must not stall the request.
            exception_formatter=structlog.dev.plain_traceback,
        )
    )
    # Level first: a line below LOG_LEVEL is dropped before it is stamped, redacted and
    # wrapped (on the worker's hot path that was most of what logging cost).
    _PROCESSORS[:] = [structlog.stdlib.filter_by_level, *shared,
                      structlog.stdlib.ProcessorFormatter.wrap_for_formatter]
    structlog.configure(
        processors=_PROCESSORS,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if log_format == "json" else _noop,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in (
        "httpx",
        "httpcore",
        "uvicorn.access",
        "apscheduler.executors.default",
        "alembic",
        # "Retrying message … in N ms" and "Aborting message …" for every deferral: the
        # worker's own outcome line (`job deferred`, `job dead-lettered`) says it once.
        "dramatiq.middleware.retries.Retries",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # dramatiq's per-message lines ("Failed to process message … with unhandled exception",
    # "… was skipped") repeat the worker's outcome line, which carries the traceback.
    logging.getLogger("dramatiq.worker.WorkerThread").setLevel(logging.CRITICAL)


def _noop(_: Any, __: str, event: EventDict) -> EventDict:
    return event
