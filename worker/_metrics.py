"""Job counters and durations per actor (prometheus-client; multiprocess-safe via env)."""

from __future__ import annotations

import time
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware
from prometheus_client import Counter, Histogram

JOBS = Counter("keysync_jobs_total", "Jobs handled by outcome", ["actor", "outcome"])
JOB_SECONDS = Histogram(
    "keysync_job_duration_seconds",
    "Job duration",
    ["actor"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800),
)


class MetricsMiddleware(Middleware):
    """Counts processed / failed / retried / skipped jobs and observes their duration."""

    def __init__(self) -> None:
        # Keyed by message id on the middleware, as dramatiq's Prometheus middleware does:
        # `message.options` is copied into the message Retries re-enqueues (see
        # LoggingContextMiddleware for why the id is a sufficient key).
        self._started: dict[str, float] = {}

    def before_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.MessageProxy
    ) -> None:
        self._started[message.message_id] = time.perf_counter()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        started = self._started.pop(message.message_id, None)
        if started is not None:
            JOB_SECONDS.labels(message.actor_name).observe(time.perf_counter() - started)
        if exception is None:
            JOBS.labels(message.actor_name, "processed").inc()
        else:
            # Retries' after-hook has run (see the middleware order): `failed` means it gave up.
            outcome = "failed" if message.failed else "retried"
            JOBS.labels(message.actor_name, outcome).inc()

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._started.pop(message.message_id, None)
        JOBS.labels(message.actor_name, "skipped").inc()
