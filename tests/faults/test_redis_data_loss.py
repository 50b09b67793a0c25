"""Redis restarted with its data wiped while catalog syncs and stock checks run.

Everything in Redis goes: the cache, the broker's queues, `lock:g2a:sync` under a running
full sync, and the fencing counter `fence:g2a:sync`, while Postgres still remembers the
highest token that wrote (`lock_fences`). Before the counter was seeded from Postgres,
every run after such a loss was `FencedOut` until the counter climbed back (CONTRACT §6:
"Fencing tokens never go backwards"). Here the runs are real: `keysync sync/stock-check
--wait` processes and a `keysync worker` on a Redis of our own, the G2A side the simulator
over HTTP; the wipe is that Redis stopped, its files deleted, and started again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.models import Game, SyncRun
from g2a_sim.server import SimServer
from keysync.embedded import EmbeddedRedis
from keysync.resources import Resources
from services import job_outbox
from services.locks import FENCE_SEED_MARGIN, SYNC_FENCE, SYNC_LOCK, fence_floor
from tests.faults.support import (
    KEYSYNC,
    Figures,
    Proc,
    catalog_differences,
    check_invariants,
    g2a_env,
    processes,
    redis_env,
    sim_clear,
    sim_faults,
    start_worker,
    sync_runs,
    wait_until,
)
from web.app import create_app

pytestmark = pytest.mark.slow


def wipe_and_restart(server: EmbeddedRedis) -> None:
    """Stop Redis, delete its data (append-only files, snapshots), start it on its port."""
    server.stop()
    for path in server.data_dir.iterdir():
        if path.name == "redis.log":
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    server.start()


def keysync(*args: str, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """Run a `keysync … --json` command to completion; its exit code and JSON answer."""
    done = subprocess.run([KEYSYNC, *args, "--json"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, check=False)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, done.stderr[-2000:]
    return done.returncode, json.loads(lines[-1])


def read_games(app: TestClient, sessions: Any, figures: Figures) -> int:
    """Customers look at games: fills the cache the next sync must keep honest."""
    with sessions() as s:
        ids = list(s.scalars(select(Game.id).where(Game.is_active.is_(True))
                             .order_by(Game.g2a_product_id).limit(100)))
    for game_id in ids:
        assert app.get(f"/games/{game_id}").status_code == 200
    assert app.get("/games?page=1").status_code == 200
    figures.requests += len(ids) + 1
    return len(ids)


def test_redis_wiped_during_syncs_and_stock_checks(
    own_resources: Resources, own_redis: EmbeddedRedis, own_redis_client: redis_lib.Redis,
    tmp_path: Path, figures: Figures,
) -> None:
    res = own_resources
    sessions = res.sessions
    app = TestClient(create_app(res))
    with SimServer(products=200, seed=31, rate_limit_per_min=0) as sim, processes() as procs:
        env = {**g2a_env(sim), **redis_env(own_redis)}

        # Before: a full sync and stock checks (CLI and worker), so tokens have been written.
        code, first = keysync("sync", "--full", "--wait", env=env)
        assert (code, first["status"], first["added"]) == (0, "succeeded", 200), first
        procs.append(worker := start_worker(tmp_path, own_redis_client, env))
        job_outbox.send(res.broker, "stock_check")
        wait_until(lambda: [r.status for r in sync_runs(sessions)] == ["succeeded"] * 2, 30,
                   "the worker's stock check")
        code, stock = keysync("stock-check", "--wait", env=env)
        assert (code, stock["status"]) == (0, "succeeded"), stock
        before = sync_runs(sessions)
        highest_before = fence_floor(sessions, SYNC_FENCE)
        assert highest_before == max(r.fence_token for r in before) == 3
        read_games(app, sessions, figures)
        httpx.post(sim.url + "/_sim/mutate", json={"changed": 40, "out_of_stock": 10},
                   timeout=5).raise_for_status()

        # During: a full sync slowed down to seconds holds the lock when Redis loses it all.
        sim_faults(sim, rate=1.0, latency_ms=3000, paths="/v1/products")
        in_flight = Proc([KEYSYNC, "sync", "--full", "--wait", "--json"], env,
                         tmp_path / "in-flight-sync.log")
        procs.append(in_flight)

        def running() -> SyncRun | None:
            assert in_flight.popen.poll() is None, in_flight.output()
            row = next((r for r in sync_runs(sessions) if r.status == "running"), None)
            return row if own_redis_client.exists(SYNC_LOCK) else None

        interrupted = wait_until(running, 30, "the full sync running under the lock")
        wipe_and_restart(own_redis)
        figures.faults += 1
        assert own_redis_client.exists(SYNC_LOCK, SYNC_FENCE) == 0  # really gone

        # After: at once, a stock check by the worker that lived through the wipe. The lock
        # is free, so it starts while the interrupted sync may still be listing: it must get
        # a newer token than every token written before, not FencedOut.
        job_outbox.send(res.broker, "stock_check")
        figures.requests += 1

        def next_run() -> SyncRun | None:
            assert worker.popen.poll() is None, worker.output()
            return next((r for r in sync_runs(sessions) if r.fence_token > interrupted.fence_token),
                        None)

        after_wipe = wait_until(next_run, 60, "the worker's stock check after the wipe")
        sim_clear(sim)
        # Seeded above the Postgres floor (the interrupted run's token), not restarted at 1.
        assert after_wipe.fence_token > interrupted.fence_token + FENCE_SEED_MARGIN
        assert in_flight.popen.wait(120) is not None

        def finished(run_id: Any) -> SyncRun | None:
            row = next(r for r in sync_runs(sessions) if r.id == run_id)
            return row if row.finished_at is not None else None

        after_wipe = wait_until(lambda: finished(after_wipe.id), 60, "the stock check's end")
        interrupted = finished(interrupted.id)
        assert after_wipe.status == "succeeded", after_wipe.error_detail
        # The interrupted sync lost its lock. If the new holder claimed its token before the
        # interrupted one wrote, the fence refused it (`failed`); if it finished first, its
        # writes were the only ones. Never both admitted at once.
        assert interrupted is not None and interrupted.status in ("failed", "succeeded")
        if interrupted.status == "succeeded":
            assert interrupted.finished_at <= after_wipe.started_at, (interrupted, after_wipe)
        else:
            assert "token" in (interrupted.error_detail or "") or "lost" in (
                interrupted.error_detail or ""), interrupted.error_detail
        figures.notes["interrupted_run"] = interrupted.status

        read_games(app, sessions, figures)  # cached again, after the wipe
        httpx.post(sim.url + "/_sim/mutate", json={"changed": 40, "out_of_stock": 10},
                   timeout=5).raise_for_status()
        code, full = keysync("sync", "--full", "--wait", env=env)
        assert (code, full["status"]) == (0, "succeeded"), full
        assert full["updated"] >= 40 and full["removed"] == 0
        code, stock = keysync("stock-check", "--wait", env=env)
        assert (code, stock["status"]) == (0, "succeeded"), stock
        tokens = [r.fence_token for r in sync_runs(sessions)]
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), tokens
        assert fence_floor(sessions, SYNC_FENCE) == tokens[-1] == stock["fence_token"]
        assert int(own_redis_client.get(SYNC_FENCE) or 0) == tokens[-1]
        assert catalog_differences(sessions, sim) == []
        figures.requests += sum(r.requests for r in sync_runs(sessions))
        figures.notes["fence_tokens"] = tokens

    # `keysync check`, as an operator runs it, with the cache compared against Postgres.
    code, report = keysync("check", env={"REDIS_URL": own_redis.url})
    assert code == 0 and report["ok"] and report["cache_entries_compared"] > 0, report
    invariants = check_invariants(figures, sessions, cache_redis=own_redis_client)
    assert invariants.ok, invariants.as_dict()
    assert invariants.cache_entries_compared > 0
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Game)) == 200
    assert all(r.status == "succeeded" for r in sync_runs(sessions) if r.id != interrupted.id)
