"""The worker's log lines on a real in-process worker and the real Redis broker: one line per
job outcome, an expected deferral at info, an alert when a job is dead-lettered, and
dramatiq's own lines rendered by our configuration."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis as redis_lib
import structlog
from structlog.types import EventDict

from g2a_sim import SimServer
from jobs import broker as jobs_broker
from keysync.logging import configure_logging
from services.locks import SYNC_LOCK
from tests.helpers import wait_until

QUEUE = "test-logs"
DEAD_LETTERS = f"dramatiq:{QUEUE}.XQ"


@dramatiq.actor(broker=jobs_broker, queue_name=QUEUE, max_retries=0)
def _doomed(reason: str) -> None:
    raise RuntimeError(reason)


@pytest.fixture
def sim() -> Iterator[SimServer]:
    """For `g2a_worker`: a catalog sync needs a G2A client, even one that never calls."""
    with SimServer(products=20, rate_limit_per_min=0) as server:
        yield server


@pytest.fixture
def logs() -> Iterator[list[EventDict]]:
    """Every structlog event of every thread, with the job context bound to it."""
    with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]) as captured:
        yield captured


def _of(logs: list[EventDict], message_id: str) -> list[EventDict]:
    return [e for e in list(logs) if e.get("message_id") == message_id]


def test_a_full_sync_finding_the_lock_held_is_one_info_line_and_no_error(
    g2a_worker: Any, settings: Any, redis_client: redis_lib.Redis, logs: list[EventDict],
) -> None:
    redis_client.set(SYNC_LOCK, "another-holder", px=60_000)
    message = jobs_broker.get_actor("catalog_sync").send(True)

    wait_until(lambda: any(e["event"] == "job deferred" for e in _of(logs, message.message_id)),
               what="the deferral logged")  # the job's last line: its outcome
    lines = _of(logs, message.message_id)
    assert not [e for e in lines if e["log_level"] in ("warning", "error", "critical")], lines
    (info,) = [e for e in lines if e["log_level"] == "info"]
    assert info["event"] == "job deferred" and info["actor"] == "catalog_sync"
    assert info["reason"].startswith("lock held: lock:g2a:sync is held by")
    assert info["retry_in_ms"] == settings.sync_lock_retry_ms
    assert redis_client.hlen("dramatiq:default.XQ.msgs") == 0  # waiting, not dead


def test_a_job_out_of_retries_is_dead_lettered_with_one_alert_line(
    worker_thread: Any, redis_client: redis_lib.Redis, logs: list[EventDict],
) -> None:
    message = _doomed.send("the disk is on fire")

    wait_until(lambda: redis_client.zcard(DEAD_LETTERS) == 1, what="the dead letter")
    wait_until(lambda: _of(logs, message.message_id), what="its outcome logged")
    worker_thread.join()
    lines = _of(logs, message.message_id)
    (alert,) = [e for e in lines if e.get("alert") == "job_dead_lettered"]
    assert (alert["event"], alert["log_level"]) == ("job dead-lettered", "error")
    assert alert["actor"] == "_doomed" and alert["message_id"] == message.message_id
    assert alert["last_error"] == "RuntimeError: the disk is on fire"
    assert alert["retries"] == 0  # the first attempt, the only one max_retries=0 allows
    assert isinstance(alert["exc_info"], RuntimeError)  # an unexpected error: its traceback
    # One outcome line for the message: no `job failed` beside the alert.
    assert [e["event"] for e in lines if e["event"].startswith("job ")] == ["job dead-lettered"]


@contextlib.contextmanager
def json_logging() -> Iterator[None]:
    """LOG_FORMAT=json (its handler writes to the stderr of the moment: capsys's inside a
    test), then the suite's own configuration again."""
    configure_logging("json", "INFO")
    try:
        yield
    finally:
        configure_logging("console", os.environ.get("LOG_LEVEL", "WARNING"))


def test_dramatiq_lines_come_out_as_our_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with json_logging():
        logging.getLogger("dramatiq.middleware.retries.Retries").warning(
            "Retries exceeded for message %r.", "abc")
        logging.getLogger("dramatiq.worker.ConsumerThread(default)").critical(
            "Consumer encountered a connection error: %s", "refused")
        # The per-message lines that repeat our outcome lines, and Retries' chatter, stay out.
        logging.getLogger("dramatiq.worker.WorkerThread").error("Failed to process message x")
        logging.getLogger("dramatiq.middleware.retries.Retries").info("Retrying message 'x'.")
        structlog.get_logger("worker").info("job done", actor="a")

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["logger"], e["level"], e["event"]) for e in lines] == [
        ("dramatiq.middleware.retries.Retries", "warning", "Retries exceeded for message 'abc'."),
        ("dramatiq.worker.ConsumerThread(default)", "critical",
         "Consumer encountered a connection error: refused"),
        ("worker", "info", "job done"),
    ]
    # One timestamp format for ours and theirs: ISO 8601 in UTC.
    assert all(e["timestamp"].endswith("Z") and "T" in e["timestamp"] for e in lines)
