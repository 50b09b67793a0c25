"""`keysync worker` as a real process honours LOG_FORMAT and LOG_LEVEL, dramatiq's own lines
included (it used to exec into dramatiq and lose our logging set-up)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis as redis_lib
from dramatiq import Message

from tests.faults.support import start_worker
from tests.helpers import wait_until


def test_worker_logs_json_at_the_level_asked_dramatiq_lines_included(
    broker: Any, redis_client: redis_lib.Redis, tmp_path: Path,
) -> None:
    worker = start_worker(tmp_path, redis_client, {"LOG_FORMAT": "json", "LOG_LEVEL": "WARNING"},
                          threads=1)
    try:
        # An existing actor called wrongly, with no retries: dramatiq gives up on it at once
        # ("Retries exceeded", its own WARNING line) and we dead-letter it with an alert.
        message = broker.enqueue(Message(
            queue_name="default", actor_name="send_email", args=(), kwargs={"bogus": 1},
            options={"max_retries": 0}))
        wait_until(lambda: redis_client.zcard("dramatiq:default.XQ") == 1, 30, "dead letter")
    finally:
        assert worker.stop() == 0, worker.output()
    text = worker.log_path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "the worker logged nothing"
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            raise AssertionError(f"not JSON: {line!r}\n{text}") from None
    events = [json.loads(line) for line in lines]
    assert not [e for e in events if e["level"] in ("debug", "info")], text
    (exceeded,) = [e for e in events if e["event"].startswith("Retries exceeded for message")]
    assert exceeded["logger"] == "dramatiq.middleware.retries.Retries"
    assert exceeded["level"] == "warning" and exceeded["timestamp"].endswith("Z")
    (alert,) = [e for e in events if e.get("alert") == "job_dead_lettered"]
    assert (alert["actor"], alert["message_id"]) == ("send_email", message.message_id)
    assert alert["last_error"].startswith("TypeError:") and "bogus" in alert["last_error"]
