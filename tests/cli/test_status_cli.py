"""`keysync status` as a real subprocess: every field present, values truthful and typed,
the exit code follows the checks, with everything up, with Redis/broker stopped, and with
nothing reachable; the text view is tables a person can read."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

import jobs
from db.models import CacheInvalidation, JobOutbox, SyncKind, SyncRun, SyncStatus, WebhookEvent
from g2a_sim import SimServer
from services import job_outbox
from services.locks import SYNC_FENCE, SYNC_LOCK, lock_value
from tests.helpers import wait_until
from worker.election import ScheduleRunner
from worker.heartbeat import HEARTBEATS

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = {
    "checked_at", "overall", "ok", "checks", "database", "redis", "broker", "cache",
    "job_outbox", "queues", "dead_letters", "workers", "sync_lock", "last_runs",
    "removal_guard", "webhook_events", "stuck_orders", "g2a_funds", "scheduler", "errors",
}
CHECKS = ["database", "redis", "broker", "workers", "queue_age", "dead_letters", "full_sync",
          "stock_check", "removal_guard", "cache_outbox", "job_outbox", "webhooks",
          "stuck_orders", "g2a_funds", "scheduler"]


def keysync_status(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", "from keysync.cli import main; main(prog_name='keysync')",
         "status", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, timeout=60,
    )


def status(**env: str) -> tuple[int, dict[str, Any]]:
    result = keysync_status("--json", **env)
    assert result.stdout, result.stderr.decode()
    assert b"Traceback" not in result.stderr, result.stderr.decode()
    return result.returncode, json.loads(result.stdout)


def states(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["state"] for c in report["checks"]}


@pytest.fixture
def scheduler(redis_client: Any, broker: Any, settings: Any) -> Iterator[ScheduleRunner]:
    """A leader for as long as a few slow `keysync status` subprocesses take."""
    runner = ScheduleRunner(redis_client, broker, jobs.schedule(settings), identity="host-a:1",
                            leader_ttl_ms=300_000)
    runner.step()
    yield runner
    runner.step_down()


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(products=40, seed=3, rate_limit_per_min=0) as server:
        yield server


def good_runs(session: Any) -> None:
    """A full sync and a stock check that just succeeded."""
    started = datetime.now(UTC) - timedelta(minutes=5)
    with session.begin():
        session.execute(insert(SyncRun), [
            {"kind": kind, "status": SyncStatus.SUCCEEDED, "fence_token": n,
             "started_at": started, "finished_at": started + timedelta(seconds=42),
             "added": 10, "updated": 2, "unchanged": 5, "removed": 1, "errors": 0,
             "pages": 3, "requests": 4}
            for n, kind in enumerate((SyncKind.FULL, SyncKind.STOCK), start=1)
        ])


def swept_jobs_finished(session: Any, redis_client: Any) -> bool:
    """Nothing queued, nothing taken but unacknowledged, no sync run still running."""
    if redis_client.llen("dramatiq:default") or redis_client.hlen("dramatiq:default.msgs"):
        return False
    with session.begin():
        return not session.scalar(select(func.count()).select_from(SyncRun)
                                  .where(SyncRun.status == SyncStatus.RUNNING))


def seed_trouble(session: Any, redis_client: Any, broker: Any) -> str:
    """A dead webhook, waiting outboxes, a held sync lock with progress and a real dead
    letter; returns the lock's value."""
    started = datetime.now(UTC) - timedelta(minutes=5)
    with session.begin():
        session.execute(insert(SyncRun).values(
            kind=SyncKind.STOCK, status=SyncStatus.RUNNING, fence_token=8, started_at=started))
        session.execute(insert(WebhookEvent), [
            {"event_id": "e1", "type": "order.status_changed", "payload": {}},
            {"event_id": "e2", "type": "order.status_changed", "payload": {}, "outcome": "dead",
             "attempts": 10},
            {"event_id": "e3", "type": "order.status_changed", "payload": {},
             "outcome": "orphan"},
            {"event_id": "e4", "type": "order.status_changed", "payload": {},
             "processed_at": started, "outcome": "processed"},
        ])
        session.execute(insert(CacheInvalidation).values(target="game:1", is_pattern=False))
        session.execute(insert(JobOutbox).values(actor_name="fulfil_order", args=["x"]))
    value = lock_value()
    redis_client.set(SYNC_LOCK, value, px=300_000)
    redis_client.set(SYNC_FENCE, 8)
    redis_client.hset("g2a:sync:progress", mapping={
        "run_id": "6f1c1c9e-0000-4000-8000-000000000001", "kind": "stock", "pages_done": "50",
        "pages_total": "500", "finished": "0"})

    # Two messages queued; one of them taken by a consumer and rejected: a real dead letter.
    job_outbox.send(broker, "catalog_sync", False)
    job_outbox.send(broker, "stock_check")
    consumer = broker.consume("default", prefetch=1, timeout=1000)
    message = next(m for m in consumer if m is not None)
    consumer.nack(message)
    consumer.close()
    return value


def test_all_healthy_exits_0_with_every_check_ok(
    session: Any, redis_client: Any, g2a_worker: Any, scheduler: ScheduleRunner,
) -> None:
    # Whatever the scheduler's first sweep enqueued runs for real against the simulator: the
    # stock check always, a full sync too within its hour of grace after 02:00 and 14:00 UTC.
    # Status is read once all of it has finished, so the test holds at any time of day.
    good_runs(session)
    wait_until(lambda: redis_client.hlen(HEARTBEATS), 10, "worker heartbeat")
    wait_until(lambda: swept_jobs_finished(session, redis_client), 60, "swept jobs finished")
    scheduler.step()
    code, report = status()
    assert (code, report["overall"], report["ok"]) == (0, "ok", True), report["checks"]
    assert set(report) == TOP_LEVEL and report["errors"] == []
    assert [c["name"] for c in report["checks"]] == CHECKS
    assert set(states(report).values()) == {"ok"}
    assert [w["stopped"] for w in report["workers"]] == [False]
    with session.begin():
        latest_full = session.scalars(select(SyncRun).where(SyncRun.kind == SyncKind.FULL)
                                      .order_by(SyncRun.started_at.desc()).limit(1)).one()
    assert report["last_runs"]["full"]["added"] == latest_full.added  # a number, not "10"


def test_status_reports_everything_truthfully_and_exits_1_on_critical(
    session: Any, redis_client: Any, broker: Any, scheduler: ScheduleRunner,
) -> None:
    good_runs(session)
    value = seed_trouble(session, redis_client, broker)
    scheduler.step()
    code, report = status()
    assert code == 1 and report["overall"] == "critical" and report["ok"] is False
    assert set(report) == TOP_LEVEL and report["errors"] == []
    for name in ("database", "redis", "broker"):
        assert report[name]["ok"] is True and report[name]["latency_ms"] >= 0
    found = states(report)
    assert {n: found[n] for n in ("dead_letters", "webhooks", "workers")} == \
        dict.fromkeys(("dead_letters", "webhooks", "workers"), "critical")
    assert found["cache_outbox"] == "warn"
    assert found["full_sync"] == "ok" and found["removal_guard"] == "ok"

    assert report["cache"]["degraded"] is True and report["cache"]["outbox_pending"] == 1
    assert report["job_outbox"]["pending"] == 1
    assert isinstance(report["job_outbox"]["oldest_s"], float)
    default = report["queues"]["default"]
    assert default["dead"] == 1 and default["ready"] >= 1
    assert isinstance(default["oldest_ready_s"], float)
    assert sum(report["dead_letters"].values()) == 1
    assert set(report["dead_letters"]) <= {"catalog_sync", "stock_check"}

    lock = report["sync_lock"]
    host, pid, secret = value.split(":")
    assert lock["held"] is True and 0 < lock["ttl_ms"] <= 300_000 and lock["fence"] == 8
    assert (lock["holder"], lock["host"], lock["pid"]) == (f"{host}:{pid}:{secret[:8]}", host,
                                                           int(pid))
    assert secret not in json.dumps(report)  # the value that could release the lock
    assert lock["run_id"] == "6f1c1c9e-0000-4000-8000-000000000001"
    assert lock["progress"]["pages_done"] == 50 and lock["progress"]["finished"] == 0
    assert lock["progress"]["kind"] == "stock"

    full = report["last_runs"]["full"]
    assert full["status"] == "succeeded" and full["duration_s"] == 42.0
    assert (full["added"], full["updated"], full["unchanged"], full["removed"]) == (10, 2, 5, 1)
    assert report["last_runs"]["incremental"] is None
    assert report["last_runs"]["stock"]["status"] == "running"
    assert report["last_runs"]["stock"]["finished_at"] is None
    hooks = report["webhook_events"]
    assert (hooks["unprocessed"], hooks["orphan"], hooks["dead"]) == (1, 1, 1)
    assert hooks["by_outcome"] == {"pending": 1, "processed": 1, "ignored": 0, "orphan": 1,
                                   "dead": 1}
    assert report["stuck_orders"] == {"count": 0, "oldest_s": None, "after_s": 900}
    assert report["g2a_funds"]["refusing"] is False

    sched = report["scheduler"]
    assert sched["leader"] == "host-a:1" and sched["schedulers"] == ["host-a:1"]
    assert set(sched["jobs"]) >= {"catalog_sync", "replay_cache_outbox"}


def test_text_view_is_tables_without_dicts_or_numbers_cut_mid_digit(
    session: Any, redis_client: Any, broker: Any, scheduler: ScheduleRunner,
) -> None:
    good_runs(session)
    seed_trouble(session, redis_client, broker)
    code, report = status()
    for columns in ("60", "120"):
        result = keysync_status(COLUMNS=columns)
        text = result.stdout.decode()
        assert result.returncode == code == 1, result.stderr.decode()
        assert "{" not in text and "}" not in text and "': " not in text, text
        assert "…" not in text, text  # nothing cut short, however narrow
        assert "overall: CRITICAL" in text
        for check in CHECKS:
            assert check in text
        # Every number of the numeric columns appears whole on one line.
        numbers = {str(report["sync_lock"]["fence"]),
                   f"{report['last_runs']['full']['duration_s']:.0f}",
                   str(report["sync_lock"]["progress"]["pages_total"])}
        lines = text.splitlines()
        for number in numbers:
            assert any(re.search(rf"(?<![\d,.]){number}(?![\d,])", line) for line in lines), \
                (number, text)
        host_pid = ":".join(report["sync_lock"]["holder"].split(":")[:2])
        assert host_pid in text  # (not eaten as an emoji code)
        assert report["sync_lock"]["run_id"] in "".join(text.split()).replace("│", "")


def test_status_with_redis_stopped_still_prints_json_and_exits_1(
    session: Any, redis_client: Any, broker: Any, dead_redis_url: str,
) -> None:
    good_runs(session)
    seed_trouble(session, redis_client, broker)
    code, report = status(REDIS_URL=dead_redis_url, BROKER_URL=dead_redis_url)
    assert code == 1 and report["overall"] == "critical"
    assert set(report) == TOP_LEVEL
    assert report["redis"]["ok"] is False and "Connection" in report["redis"]["error"]
    assert report["broker"]["ok"] is False and report["redis"]["latency_ms"] is None
    assert report["database"]["ok"] is True
    assert report["cache"]["degraded"] is True
    for unknown in ("queues", "dead_letters", "workers", "sync_lock", "scheduler"):
        assert report[unknown] is None
    found = states(report)
    assert found["redis"] == found["broker"] == "critical"
    assert found["workers"] == found["scheduler"] == found["dead_letters"] == "warn"
    assert report["last_runs"]["full"]["added"] == 10
    assert report["webhook_events"]["dead"] == 1
    assert report["job_outbox"]["pending"] == 1
    # The text view says the same without a traceback.
    text = keysync_status(REDIS_URL=dead_redis_url, BROKER_URL=dead_redis_url)
    assert text.returncode == 1 and b"Traceback" not in text.stderr
    assert "DOWN" in text.stdout.decode()


def test_status_with_nothing_reachable_exits_1_with_the_same_shape(
    dead_redis_url: str,
) -> None:
    from keysync.embedded import free_port

    dead_db = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    code, report = status(DATABASE_URL=dead_db, REDIS_URL=dead_redis_url, BROKER_URL=dead_redis_url)
    assert code == 1
    assert set(report) == TOP_LEVEL
    assert not any(report[n]["ok"] for n in ("database", "redis", "broker"))
    assert report["last_runs"] is None and report["job_outbox"] == {"pending": None,
                                                                     "oldest_s": None}
    assert [c["name"] for c in report["checks"]] == CHECKS
    assert {c["state"] for c in report["checks"]} == {"critical", "warn"}
