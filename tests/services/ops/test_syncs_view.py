"""`services.ops.syncs`: the run history, the chart's bounded window and the running run,
over real Postgres and Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from db.models import SyncKind, SyncRun, SyncStatus
from services.catalog import SYNC_PROGRESS
from services.locks import SYNC_LOCK
from services.ops import syncs
from services.ops.errors import OpsInputError

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def seed(session: Any, count: int, *, every: timedelta, kind: SyncKind = SyncKind.STOCK,
         status: SyncStatus = SyncStatus.SUCCEEDED) -> None:
    with session.begin():
        session.execute(insert(SyncRun), [
            {"kind": kind, "status": status, "fence_token": i,
             "started_at": NOW - every * (i + 1),
             "finished_at": NOW - every * (i + 1) + timedelta(seconds=2),
             "added": 1, "updated": i % 5, "removed": i % 2}
            for i in range(count)])


def test_history_newest_first_filtered_and_paged(session: Any) -> None:
    seed(session, 5, every=timedelta(hours=1))
    seed(session, 2, every=timedelta(hours=3), kind=SyncKind.FULL, status=SyncStatus.PARTIAL)
    page = syncs.list_runs(session, limit=3)
    assert page.total == 7 and len(page.items) == 3
    started = [r.started_at for r in syncs.list_runs(session, limit=10).items]
    assert started == sorted(started, reverse=True)
    assert syncs.list_runs(session, kind=SyncKind.FULL).total == 2
    assert syncs.list_runs(session, status=SyncStatus.PARTIAL, kind=SyncKind.STOCK).total == 0
    assert syncs.list_runs(session, limit=3, offset=6).items[0].started_at == min(started)
    run = page.items[0]
    assert run.duration_s == 2.0 and run.dump()["added"] == 1
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}):
        with pytest.raises(OpsInputError):
            syncs.list_runs(session, **bad)


def test_chart_is_the_window_oldest_first_and_bounded(session: Any) -> None:
    seed(session, 200, every=timedelta(hours=4))  # 33 days of runs
    whole = syncs.chart(session, now=NOW, days=30)
    assert whole.total == 180 and len(whole.points) == 180  # 4 h apart, 30 days inclusive
    assert [p.started_at for p in whole.points] == sorted(p.started_at for p in whole.points)
    assert {p.changed for p in whole.points} == {1, 2, 3, 4, 5}  # added + updated
    assert {p.removed for p in whole.points} == {0, 1}
    assert {p.duration_s for p in whole.points} == {2.0}
    bounded = syncs.chart(session, now=NOW, days=30, limit=50)
    assert bounded.total == 180 and len(bounded.points) == 50
    assert bounded.points == whole.points[-50:]  # the newest, still oldest first
    with pytest.raises(OpsInputError):
        syncs.chart(session, now=NOW, days=0)


def test_running_is_the_lock_holders_run(session: Any, redis_client: Any) -> None:
    assert syncs.running(session, redis_client, now=NOW) is None
    with session.begin():
        run_id = session.execute(insert(SyncRun).values(
            kind=SyncKind.FULL, status=SyncStatus.RUNNING, fence_token=9,
            started_at=NOW - timedelta(minutes=2)).returning(SyncRun.id)).scalar_one()
    progress = {"run_id": str(run_id), "pages_done": 3, "pages_total": 9, "added": 5,
                "updated": 2, "unchanged": 50, "removed": 0, "errors": 1, "requests": 4,
                "finished": 0}
    redis_client.hset(SYNC_PROGRESS, mapping=progress)
    # Progress without a lock holder: a run that died without finishing is not running.
    assert syncs.running(session, redis_client, now=NOW) is None
    redis_client.set(SYNC_LOCK, "worker-1:77:" + "0f" * 16, px=60_000)
    running = syncs.running(session, redis_client, now=NOW)
    assert running is not None
    assert (running.run_id, running.kind, running.running_s) == (run_id, SyncKind.FULL, 120.0)
    assert running.progress.pages_done == 3 and running.progress.errors == 1
    redis_client.hset(SYNC_PROGRESS, "finished", 1)
    assert syncs.running(session, redis_client, now=NOW) is None
