"""Owns the process's resources (engine, Redis, cache, G2A HTTP client) and a DB session
per message.

Resources are built at worker boot and disposed at shutdown; every message gets a fresh
`JobContext` (its own Session, closed afterwards even if the job raised) that actors
fetch with `worker.context.current_job()`.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from keysync.resources import Resources
from keysync.settings import get_settings
from worker import context
from worker._hooks import MessageHooks


class ResourcesMiddleware(MessageHooks):
    def __init__(self) -> None:
        super().__init__()
        self.resources: Resources | None = None

    def _ensure(self, broker: dramatiq.Broker) -> Resources:
        if self.resources is None:
            if not isinstance(broker, RedisBroker):
                raise TypeError(f"keysync runs on a RedisBroker, not {type(broker).__name__}")
            settings = get_settings()
            # Also when started as `dramatiq jobs` instead of `keysync worker`.
            settings.require_secrets()
            self.resources = Resources.build(settings, broker, name="keysync-worker")
        return self.resources

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._ensure(broker)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # After, not before: dramatiq emits `before_worker_shutdown` while its threads are
        # still finishing their messages, which would then find their clients closed.
        if self.resources is not None:
            self.resources.close()
            self.resources = None

    def started(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        resources = self._ensure(broker)
        context.enter(context.JobContext(resources, resources.sessions(), message))

    def finished(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy,
                 exception: BaseException | None) -> None:
        context.leave()

    def skipped(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        context.leave()
