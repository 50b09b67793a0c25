"""Worker plumbing on the real Redis broker: a session per message, context bound, metrics."""

from __future__ import annotations

import dramatiq
import structlog

from worker import current_job
from worker._metrics import JOBS

seen: list[dict[str, object]] = []


@dramatiq.actor(queue_name="test-middleware", max_retries=0)
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
        worker.stop()
    assert sorted(s["value"] for s in seen) == [-1, 0, 1, 2, 3]
    assert all(s["actor"] == "_probe" and s["db_ok"] for s in seen)
    assert {m.message_id for m in messages} <= {s["message_id"] for s in seen}
    assert JOBS.labels("_probe", "processed")._value.get() >= 4
    assert JOBS.labels("_probe", "failed")._value.get() >= 1
