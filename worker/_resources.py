"""Owns the process's resources (engine, Redis, cache, G2A HTTP client) and a DB session
per message.

Resources are built at worker boot and disposed at shutdown; every message gets a fresh
`JobContext` (its own Session, closed afterwards even if the job raised) that actors
fetch with `current_job()`. Actors stay thin: parse arguments, call one service.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware
from sqlalchemy.orm import Session

from keysync.resources import Resources
from keysync.settings import get_settings


@dataclass
class JobContext:
    resources: Resources
    session: Session
    message: dramatiq.Message[Any]


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("job", default=None)


def current_job() -> JobContext:
    job = _current.get()
    if job is None:
        raise RuntimeError("current_job() called outside a dramatiq message")
    return job


class ResourcesMiddleware(Middleware):
    def __init__(self) -> None:
        self.resources: Resources | None = None

    def _ensure(self, broker: dramatiq.Broker) -> Resources:
        if self.resources is None:
            settings = get_settings()
            # Also when started as `dramatiq jobs` instead of `keysync worker`.
            settings.require_secrets()
            self.resources = Resources.build(settings, broker, name="keysync-worker")
        return self.resources

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._ensure(broker)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.resources is not None:
            self.resources.close()
            self.resources = None

    def before_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any]
    ) -> None:
        resources = self._ensure(broker)
        _current.set(JobContext(resources, resources.sessions(), message))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message[Any],
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._close()

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> None:
        self._close()

    def _close(self) -> None:
        job = _current.get()
        if job is not None:
            job.session.close()
            _current.set(None)
