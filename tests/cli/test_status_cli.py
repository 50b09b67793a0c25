"""`keysync status --json` as a real subprocess: every field present, values truthful,
with everything up, with Redis/broker stopped, and with nothing reachable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

import jobs
from db.models import CacheInvalidation, JobOutbox, SyncKind, SyncRun, SyncStatus, WebhookEvent
from services import job_outbox
from services.locks import SYNC_FENCE, SYNC_LOCK
from worker.election import ScheduleRunner

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = {
    "checked_at",
    "ok",
    "database",
    "redis",
    "broker",
    "cache",
    "job_outbox",
    "queues",
    "dead_letters",
    "sync_lock",
    "last_runs",
    "removal_guard",
    "webhook_events",
    "scheduler",
    "errors",
}


def status(**env: str) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from keysync.cli import main; main(prog_name='keysync')",
            "status",
            "--json",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        timeout=60,
    )
    assert result.stdout, result.stderr.decode()
    return result.returncode, json.loads(result.stdout)


def seed(session: Any, redis_client: Any, broker: Any) -> None:
    started = datetime.now(UTC) - timedelta(minutes=5)
    with session.begin():
        # A finished full run and a stock check still running (no finish, no counts yet).
        session.execute(insert(SyncRun), [
            {"kind": SyncKind.FULL, "status": SyncStatus.SUCCEEDED, "fence_token": 7,
             "started_at": started, "finished_at": started + timedelta(seconds=42),
             "added": 10, "updated": 2, "unchanged": 5, "removed": 1, "errors": 0, "pages": 3,
             "requests": 4},
            {"kind": SyncKind.STOCK, "status": SyncStatus.RUNNING, "fence_token": 8,
             "started_at": started},
        ])
        session.execute(
            insert(WebhookEvent),
            [
                {"event_id": "e1", "type": "order.status_changed", "payload": {}},
                {
                    "event_id": "e2",
                    "type": "order.status_changed",
                    "payload": {},
                    "outcome": "dead",
                    "attempts": 10,
                },
                {
                    "event_id": "e3",
                    "type": "order.status_changed",
                    "payload": {},
                    "outcome": "orphan",
                },
                {
                    "event_id": "e4",
                    "type": "order.status_changed",
                    "payload": {},
                    "processed_at": started,
                    "outcome": "processed",
                },
            ],
        )
        session.execute(insert(CacheInvalidation).values(target="game:1", is_pattern=False))
        session.execute(insert(JobOutbox).values(actor_name="fulfil_order", args=["x"]))
    redis_client.set(SYNC_LOCK, "0123456789abcdef", px=30_000)
    redis_client.set(SYNC_FENCE, 8)
    redis_client.hset("g2a:sync:progress", mapping={"pages": "3", "kind": "stock"})

    # Two messages queued; one of them taken by a consumer and rejected: a real dead letter.
    job_outbox.send(broker, "catalog_sync", False)
    job_outbox.send(broker, "stock_check")
    consumer = broker.consume("default", prefetch=1, timeout=1000)
    message = next(m for m in consumer if m is not None)
    consumer.nack(message)
    consumer.close()


def test_status_reports_everything_truthfully(session: Any, redis_client: Any, broker: Any,
                                              settings: Any) -> None:
    seed(session, redis_client, broker)
    runner = ScheduleRunner(redis_client, broker, jobs.schedule(settings), identity="host-a:1")
    runner.step()
    try:
        code, report = status()
    finally:
        runner.step_down()
    assert code == 0
    assert set(report) == TOP_LEVEL
    assert report["ok"] is True and report["errors"] == []
    for name in ("database", "redis", "broker"):
        assert report[name]["ok"] is True and report[name]["latency_ms"] >= 0

    assert report["cache"] == {"degraded": True, "outbox_pending": 1}  # waiting invalidation
    assert report["job_outbox"] == {"pending": 1}
    # The scheduler's first sweep enqueued its due ticks too; count what we know is there.
    default = report["queues"]["default"]
    assert default["dead"] == 1 and default["ready"] >= 1
    assert sum(report["dead_letters"].values()) == 1
    assert set(report["dead_letters"]) <= {"catalog_sync", "stock_check"}

    lock = report["sync_lock"]
    assert lock["held"] is True and lock["holder"] == "01234567" and 0 < lock["ttl_ms"] <= 30_000
    assert lock["fence"] == 8 and lock["progress"] == {"pages": "3", "kind": "stock"}

    full = report["last_runs"]["full"]
    assert full["status"] == "succeeded" and full["duration_s"] == 42.0
    assert (full["added"], full["updated"], full["unchanged"], full["removed"]) == (10, 2, 5, 1)
    assert report["last_runs"]["incremental"] is None
    assert report["last_runs"]["stock"]["status"] == "running"
    assert report["last_runs"]["stock"]["finished_at"] is None
    assert report["removal_guard"]["active"] is False  # the last full run succeeded
    assert report["webhook_events"] == {"unprocessed": 1, "orphan": 1, "dead": 1}

    sched = report["scheduler"]
    assert sched["leader"] == "host-a:1" and sched["schedulers"] == ["host-a:1"]
    assert set(sched["jobs"]) >= {"catalog_sync", "replay_cache_outbox"}
    assert all(job["next_fire"] for job in sched["jobs"].values())


def test_status_with_redis_stopped_says_so_and_still_reports_the_database(
    session: Any, redis_client: Any, broker: Any, dead_redis_url: str
) -> None:
    seed(session, redis_client, broker)
    code, report = status(REDIS_URL=dead_redis_url, BROKER_URL=dead_redis_url)
    assert code == 0
    assert set(report) == TOP_LEVEL
    assert report["ok"] is False
    assert report["redis"]["ok"] is False and "Connection" in report["redis"]["error"]
    assert report["broker"]["ok"] is False and report["redis"]["latency_ms"] is None
    assert report["database"]["ok"] is True
    assert report["cache"]["degraded"] is True
    for unknown in ("queues", "dead_letters", "sync_lock", "scheduler"):
        assert report[unknown] is None
    assert report["last_runs"]["full"]["added"] == 10
    assert report["webhook_events"]["dead"] == 1
    assert report["job_outbox"] == {"pending": 1}


def test_status_with_nothing_reachable_exits_5_with_the_same_shape(
    dead_redis_url: str,
) -> None:
    from keysync.embedded import free_port

    dead_db = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    code, report = status(DATABASE_URL=dead_db, REDIS_URL=dead_redis_url, BROKER_URL=dead_redis_url)
    assert code == 5
    assert set(report) == TOP_LEVEL
    assert not any(report[n]["ok"] for n in ("database", "redis", "broker"))
    assert report["last_runs"] is None and report["job_outbox"] == {"pending": None}
