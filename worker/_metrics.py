"""Job counters and durations per actor (prometheus-client; multiprocess-safe via env)."""

from __future__ import annotations

import dramatiq
from prometheus_client import Counter, Histogram

from worker._hooks import MessageHooks

JOBS = Counter("keysync_jobs_total", "Jobs handled by outcome", ["actor", "outcome"])
JOB_SECONDS = Histogram(
    "keysync_job_duration_seconds",
    "Job duration",
    ["actor"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800),
)


class MetricsMiddleware(MessageHooks):
    """Counts processed / failed / retried / skipped jobs and observes their duration."""

    def finished(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy,
                 exception: BaseException | None) -> None:
        elapsed = self.elapsed_s(message)
        if elapsed is not None:
            JOB_SECONDS.labels(message.actor_name).observe(elapsed)
        if exception is None:
            JOBS.labels(message.actor_name, "processed").inc()
        else:
            # Retries' after-hook has run (see the middleware order): `failed` means it gave up.
            outcome = "failed" if message.failed else "retried"
            JOBS.labels(message.actor_name, outcome).inc()

    def skipped(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        JOBS.labels(message.actor_name, "skipped").inc()
