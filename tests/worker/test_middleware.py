"""Worker plumbing on the real Redis broker: a session per message, context bound, metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import structlog
from dramatiq.middleware import CurrentMessage, Middleware, Retries, SkipMessage
from prometheus_client import REGISTRY

from jobs import broker as jobs_broker
from tests.helpers import stop_worker, wait_until
from worker._logging import LoggingContextMiddleware
from worker._metrics import JOBS, MetricsMiddleware
from worker.context import current_job

seen: list[dict[str, object]] = []


@dramatiq.actor(broker=jobs_broker, queue_name="test-middleware", max_retries=0)
def _probe(value: int) -> None:
    job = current_job()
    context = structlog.contextvars.get_contextvars()
    seen.append(
        {
            "value": value,
            "session_open": job.session.is_active is not None,
            "actor": context.get("actor"),
            "message_id": context.get("message_id"),
            "session": id(job.session),
            "db_ok": job.session.connection().exec_driver_sql("SELECT 1").scalar() == 1,
        }
    )
    if value < 0:
        raise ValueError("boom")


def test_each_message_gets_its_own_session_and_log_context(broker) -> None:
    seen.clear()
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        messages = [_probe.send(i) for i in range(4)]
        _probe.send(-1)
        broker.join("test-middleware", timeout=20_000)
        worker.join()
    finally:
        stop_worker(broker, worker)
    assert sorted(s["value"] for s in seen) == [-1, 0, 1, 2, 3]
    assert all(s["actor"] == "_probe" and s["db_ok"] for s in seen)
    assert {m.message_id for m in messages} <= {s["message_id"] for s in seen}
    assert JOBS.labels("_probe", "processed")._value.get() >= 4
    assert JOBS.labels("_probe", "failed")._value.get() >= 1


# --- timing state stays on the middleware, never in the message ----------------------------

# What dramatiq itself puts in the options of a retried Redis message; anything else in
# there was left by one of our middlewares and would travel to the next attempt.
DRAMATIQ_RETRY_OPTIONS = {"retries", "traceback", "requeue_timestamp", "redis_message_id", "eta"}
WORK_S = 0.1
attempts: list[dict[str, Any]] = []


@dramatiq.actor(broker=jobs_broker, queue_name="test-middleware-retry", max_retries=1,
                min_backoff=1000, max_backoff=1000)
def _flaky() -> None:
    message = CurrentMessage.get_current_message()
    assert message is not None
    attempts.append({"started": time.monotonic(), "options": dict(message.options)})
    if len(attempts) == 1:
        raise ValueError("first attempt fails")
    time.sleep(WORK_S)  # the work whose duration the middleware measures


@dramatiq.actor(broker=jobs_broker, queue_name="test-middleware-skip", max_retries=0)
def _skipped() -> None:
    raise AssertionError("a skipped message never reaches its actor")


class _Observer(Middleware):
    """Records every enqueue of `_flaky` exactly as it went to Redis, and skips `_skipped`
    after our logging and metrics middleware have started timing it."""

    def __init__(self) -> None:
        self.enqueued: list[tuple[int | None, dict[str, Any]]] = []

    def after_enqueue(self, broker: dramatiq.Broker, message: Any, delay: int | None) -> None:
        if message.actor_name == "_flaky":
            self.enqueued.append((delay, dict(message.options)))

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if message.actor_name == "_skipped":
            raise SkipMessage("skipped by the test")


@pytest.fixture
def observed_worker(broker: Any) -> Iterator[tuple[_Observer, dramatiq.Worker]]:
    observer = _Observer()
    # After Retries, hence after our middleware: its skip comes once timing has started.
    broker.add_middleware(observer, after=Retries)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        yield observer, worker
    finally:
        stop_worker(broker, worker)
        broker.middleware.remove(observer)


def _ours(broker: Any) -> tuple[LoggingContextMiddleware, MetricsMiddleware]:
    logging_mw = next(m for m in broker.middleware if isinstance(m, LoggingContextMiddleware))
    metrics_mw = next(m for m in broker.middleware if isinstance(m, MetricsMiddleware))
    return logging_mw, metrics_mw


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _job_logs(caplog: pytest.LogCaptureFixture, message_id: str) -> list[dict[str, Any]]:
    events = [r.msg for r in caplog.records if r.name == "worker" and isinstance(r.msg, dict)]
    return [e for e in events if e.get("message_id") == message_id]


def test_a_retried_message_carries_no_timing_state_and_durations_stay_per_attempt(
    broker: Any, observed_worker: tuple[_Observer, dramatiq.Worker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    observer, worker = observed_worker
    attempts.clear()
    caplog.set_level(logging.INFO, logger="worker")
    count_before = _sample("keysync_job_duration_seconds_count", actor="_flaky")
    sum_before = _sample("keysync_job_duration_seconds_sum", actor="_flaky")
    processed_before = _sample("keysync_jobs_total", actor="_flaky", outcome="processed")
    retried_before = _sample("keysync_jobs_total", actor="_flaky", outcome="retried")

    message = _flaky.send()
    # The metrics middleware's after-hook runs last, so its count closes the second attempt.
    wait_until(lambda: _sample("keysync_job_duration_seconds_count", actor="_flaky")
               == count_before + 2, 20, "both attempts measured")
    worker.join()

    # Every enqueue as it went to Redis (the send, Retries' re-enqueue onto the delay
    # queue, the move back once due) and the retry as the worker handed it to the actor:
    # dramatiq's own options only, no start time of ours.
    retried = [(delay, options) for delay, options in observer.enqueued if "retries" in options]
    assert retried, observer.enqueued
    first_delay, _ = retried[0]
    assert first_delay is not None and first_delay >= 500  # Retries' re-enqueue, backed off
    assert all(options["retries"] == 1 for _, options in retried)
    for _, options in observer.enqueued:
        assert set(options) <= DRAMATIQ_RETRY_OPTIONS, options
    assert len(attempts) == 2
    assert set(attempts[1]["options"]) <= DRAMATIQ_RETRY_OPTIONS, attempts[1]["options"]

    # The second attempt's duration is its own work, not time since the first attempt.
    gap_s = attempts[1]["started"] - attempts[0]["started"]
    assert gap_s > 0.5
    logs = _job_logs(caplog, message.message_id)
    assert [(e["event"], e["retries"]) for e in logs] == [("job failed", 0), ("job done", 1)]
    failed_ms, done_ms = (e["duration_ms"] for e in logs)
    assert 0 <= failed_ms < WORK_S * 1000
    assert WORK_S * 1000 <= done_ms < gap_s * 1000
    observed_s = _sample("keysync_job_duration_seconds_sum", actor="_flaky") - sum_before
    assert WORK_S <= observed_s < gap_s
    assert _sample("keysync_jobs_total", actor="_flaky", outcome="retried") == retried_before + 1
    assert _sample("keysync_jobs_total", actor="_flaky", outcome="processed") == (
        processed_before + 1)

    # Nothing is left behind on the middleware either.
    assert all(not mw._started for mw in _ours(broker))


def test_a_skipped_message_releases_its_timing_state(
    broker: Any, observed_worker: tuple[_Observer, dramatiq.Worker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, worker = observed_worker
    caplog.set_level(logging.INFO, logger="worker")
    skipped_before = _sample("keysync_jobs_total", actor="_skipped", outcome="skipped")

    message = _skipped.send()
    wait_until(lambda: _sample("keysync_jobs_total", actor="_skipped", outcome="skipped")
               == skipped_before + 1, 20, "message skipped")
    worker.join()

    assert [e["event"] for e in _job_logs(caplog, message.message_id)] == ["job skipped"]
    assert _sample("keysync_job_duration_seconds_count", actor="_skipped") == 0
    assert all(not mw._started for mw in _ours(broker))
