"""`keysync sync` / `keysync stock-check`: the real console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis as redis_lib
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Game, SyncRun
from g2a_sim import SimServer
from keysync.embedded import free_port
from services.locks import SYNC_FENCE, SYNC_LOCK, RedisLock, holder_label, lock_value
from tests.helpers import wait_until
from tests.services.catalog.support import active_ids, sim_ids, sim_post

KEYSYNC = os.path.join(os.path.dirname(sys.executable), "keysync")
REQUIRED = {"run_id", "kind", "status", "added", "updated", "unchanged", "removed", "errors",
            "pages", "requests", "duration_s"}


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(products=200, seed=5, rate_limit_per_min=0) as server:
        yield server


def g2a_env(url: str, sim: SimServer | None = None) -> dict[str, str]:
    config = (sim.config if sim is not None else SimServer().config)
    return {
        **os.environ,
        "G2A_API_URL": url,
        "G2A_EMAIL": config.email,
        "G2A_API_HASH": config.api_hash,
        "G2A_API_SECRET": config.api_secret,
        "G2A_RATE_LIMIT_PER_MIN": "600000",
    }


def keysync(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KEYSYNC, *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def one_json(out: str) -> dict[str, Any]:
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    data: dict[str, Any] = json.loads(lines[0])
    return data


def test_sync_wait_json_then_noop_and_stock_check(sim: SimServer, session: Session) -> None:
    env = g2a_env(sim.url, sim)
    first = keysync("sync", "--full", "--wait", "--json", env=env)
    assert first.returncode == 0, first.stderr
    data = one_json(first.stdout)
    assert data.keys() >= REQUIRED
    assert (data["kind"], data["status"], data["added"]) == ("full", "succeeded", 200)
    assert session.scalar(select(func.count()).select_from(Game)) == 200

    again = one_json(keysync("sync", "--wait", "--json", env=env).stdout)
    assert (again["kind"], again["status"], again["added"], again["updated"]) == \
        ("incremental", "succeeded", 0, 0)

    stock = keysync("stock-check", "--wait", "--json", env=env)
    assert stock.returncode == 0, stock.stderr
    assert one_json(stock.stdout)["kind"] == "stock"

    table = keysync("sync", "--full", "--wait", env=env)
    assert table.returncode == 0 and "unchanged" in table.stdout and "200" in table.stdout


def test_lock_held_exits_3(sim: SimServer, redis_client: redis_lib.Redis) -> None:
    # A TTL far beyond two CLI start-ups on a loaded machine (each can take 10 s).
    redis_client.set(SYNC_LOCK, "another-run", px=300_000)
    result = keysync("sync", "--wait", "--json", env=g2a_env(sim.url, sim))
    assert result.returncode == 3, result.stderr
    assert one_json(result.stdout)["status"] == "locked"
    stock = keysync("stock-check", "--wait", env=g2a_env(sim.url, sim))
    assert stock.returncode == 3 and "lock:g2a:sync" in stock.stderr


def test_partial_exits_4(sim: SimServer) -> None:
    httpx.post(sim.url + "/_sim/faults",
               json={"rate": 0.5, "status": 400, "paths": "/v1/products"}).raise_for_status()
    result = keysync("sync", "--full", "--wait", "--json", env=g2a_env(sim.url, sim))
    assert result.returncode == 4, result.stderr
    data = one_json(result.stdout)
    assert data["status"] == "partial" and data["errors"] > 0 and data["removed"] == 0


def test_g2a_unreachable_exits_5() -> None:
    result = keysync("sync", "--full", "--wait", "--json",
                     env=g2a_env(f"http://127.0.0.1:{free_port()}"))
    assert result.returncode == 5, result.stderr
    assert one_json(result.stdout)["status"] == "failed"


def test_redis_unreachable_exits_5(sim: SimServer, dead_redis_url: str) -> None:
    env = {**g2a_env(sim.url, sim), "REDIS_URL": dead_redis_url, "BROKER_URL": dead_redis_url}
    result = keysync("sync", "--wait", env=env)
    assert result.returncode == 5 and "Redis unreachable" in result.stderr


def test_missing_g2a_url_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("G2A_")}
    for args in (("sync", "--wait"), ("stock-check",)):
        result = keysync(*args, env=env)
        assert result.returncode == 2 and "G2A_API_URL" in result.stderr


def test_without_wait_enqueues(sim: SimServer, redis_client: redis_lib.Redis) -> None:
    result = keysync("sync", "--full", "--json", env=g2a_env(sim.url, sim))
    assert result.returncode == 0, result.stderr
    data = one_json(result.stdout)
    assert data["queued"] is True and data["actor"] == "catalog_sync"
    queued = [json.loads(raw) for raw in redis_client.hvals("dramatiq:default.msgs")]
    assert [(m["message_id"], m["actor_name"], m["args"]) for m in queued] == \
        [(data["message_id"], "catalog_sync", [True])]
    plain = keysync("stock-check", env=g2a_env(sim.url, sim))
    assert plain.returncode == 0 and "stock_check" in plain.stdout


# -- catalog removal rules (CONTRACT §6) through the console script ------------------------


def full_sync(env: dict[str, str], *extra: str) -> tuple[int, dict[str, Any], str]:
    result = keysync("sync", "--full", "--wait", "--json", *extra, env=env)
    return result.returncode, one_json(result.stdout), result.stderr


def status_guard(env: dict[str, str]) -> dict[str, Any]:
    result = keysync("status", "--json", env=env)
    # 1: no worker or scheduler runs in these tests, and status says so (critical checks).
    assert result.returncode in (0, 1), result.stderr
    guard: dict[str, Any] = one_json(result.stdout)["removal_guard"]
    return guard


def test_listing_drift_never_deactivates_a_product_g2a_still_sells(
    sim: SimServer, session: Session,
) -> None:
    env = g2a_env(sim.url, sim)
    assert full_sync(env)[0] == 0
    sim_post(sim, "/_sim/drift", {"after": 3})
    code, drifted, err = full_sync(env)
    applied = httpx.get(sim.url + "/_sim/stats").json()["drift"]["applied"]
    assert applied is not None and code == 0, err
    assert drifted["status"] == "succeeded" and drifted["removed"] == 0
    # The listing missed at least one product that slid across a page boundary; its
    # look-up found it, so it stays on sale.
    assert drifted["still_listed"] >= 1
    assert drifted["still_listed"] == drifted["removal_candidates"]
    assert sim_ids(sim) <= active_ids(session)
    # The product G2A really removed (on a page read before it went) goes by the end of
    # the next full sync.
    code, nxt, err = full_sync(env)
    assert code == 0 and nxt["removed"] == 1, err
    assert active_ids(session) == sim_ids(sim)
    assert applied["removed"] not in active_ids(session)


def test_empty_listing_trips_the_removal_guard_until_a_full_run_succeeds(
    sim: SimServer, session: Session,
) -> None:
    env = {**g2a_env(sim.url, sim), "LOG_FORMAT": "json"}
    assert full_sync(env)[0] == 0
    assert status_guard(env)["active"] is False
    sim_post(sim, "/_sim/faults", {"empty_listing": True})  # 200 {total: 0, docs: []}
    lookups = httpx.get(sim.url + "/_sim/stats").json()["lookups"]

    code, guarded, err = full_sync(env)
    assert code == 4, err
    assert (guarded["status"], guarded["removed"], guarded["removal_guard"]) == \
        ("partial", 0, True)
    assert guarded["removal_candidates"] == 200
    assert guarded["error_detail"].startswith("removal guard: 200 of 200 active games")
    assert httpx.get(sim.url + "/_sim/stats").json()["lookups"] == lookups  # none spent
    assert len(active_ids(session)) == 200
    alerts = [json.loads(line) for line in err.splitlines()
              if line.startswith("{") and "sync_removal_guard" in line]
    assert len(alerts) == 1, err
    assert alerts[0]["level"] == "error" and alerts[0]["alert"] == "sync_removal_guard"
    assert (alerts[0]["candidates"], alerts[0]["active"]) == (200, 200)
    assert alerts[0]["run_id"] == guarded["run_id"]

    guard = status_guard(env)
    assert guard["active"] is True and guard["run_id"] == guarded["run_id"]
    assert guard["detail"] == guarded["error_detail"]
    text = keysync("status", env=env)
    assert "removal guard active" in text.stdout, text.stdout
    # An incremental run proves nothing about removals: the guard stays shown.
    incremental = keysync("sync", "--wait", "--json", env=env)
    assert one_json(incremental.stdout)["status"] == "succeeded"
    assert status_guard(env)["active"] is True

    httpx.delete(sim.url + "/_sim/faults").raise_for_status()  # G2A answers properly again
    code, ok, err = full_sync(env)
    assert code == 0 and ok["status"] == "succeeded" and ok["removed"] == 0, err
    assert status_guard(env)["active"] is False
    assert "removal guard active" not in keysync("status", env=env).stdout


def test_allow_mass_removal_lifts_the_guard_for_one_run(
    sim: SimServer, session: Session,
) -> None:
    env = g2a_env(sim.url, sim)
    assert full_sync(env)[0] == 0
    first = sim_post(sim, "/_sim/mutate", {"removed": 40})  # 20 % of 200, really gone
    code, guarded, _ = full_sync(env)
    assert code == 4 and guarded["removal_guard"] and guarded["removed"] == 0
    assert len(active_ids(session)) == 200

    code, lifted, err = full_sync(env, "--allow-mass-removal")
    assert code == 0, err
    assert (lifted["status"], lifted["removed"], lifted["removal_guard"]) == \
        ("succeeded", 40, False)
    assert active_ids(session) == sim_ids(sim) and not active_ids(session) & set(first["removed"])
    assert status_guard(env)["active"] is False

    # For that one run only: the next mass removal is guarded again.
    sim_post(sim, "/_sim/mutate", {"removed": 40})
    code, again, _ = full_sync(env)
    assert code == 4 and again["removal_guard"] and again["removed"] == 0
    assert status_guard(env)["active"] is True


def test_allow_mass_removal_needs_full_and_is_enqueued_with_the_run(
    sim: SimServer, redis_client: redis_lib.Redis,
) -> None:
    env = g2a_env(sim.url, sim)
    wrong = keysync("sync", "--allow-mass-removal", "--wait", env=env)
    assert wrong.returncode == 2 and "--full" in wrong.stderr
    queued = keysync("sync", "--full", "--allow-mass-removal", "--json", env=env)
    assert queued.returncode == 0, queued.stderr
    data = one_json(queued.stdout)
    assert data["allow_mass_removal"] is True
    messages = [json.loads(raw) for raw in redis_client.hvals("dramatiq:default.msgs")]
    assert [(m["message_id"], m["args"], m["kwargs"]) for m in messages] == \
        [(data["message_id"], [True], {"allow_mass_removal": True})]


# -- failures read as one line, with the contract's exit codes (issue 15) ------------------

REPRS = ("datetime.datetime(", "ZoneInfo(", "Range(", "Traceback")


def split_stderr(err: str) -> tuple[list[dict[str, Any]], list[str]]:
    """stderr of a run with LOG_FORMAT=json: its log lines, and every other line."""
    logs, other = [], []
    for line in err.splitlines():
        if line.startswith("{"):
            logs.append(json.loads(line))
        elif line.strip():
            other.append(line)
    return logs, other


def sync_rows(session: Session) -> list[SyncRun]:
    session.expire_all()
    return list(session.scalars(select(SyncRun).order_by(SyncRun.started_at)))


def test_lock_held_is_one_line_exit_3_and_recorded(
    sim: SimServer, session: Session, redis_client: redis_lib.Redis,
) -> None:
    value = lock_value()
    redis_client.set(SYNC_LOCK, value, px=300_000)
    env = {**g2a_env(sim.url, sim), "LOG_FORMAT": "json"}
    result = keysync("sync", "--full", "--wait", env=env)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    logs, [message] = split_stderr(result.stderr)
    [row] = sync_rows(session)
    assert (row.kind, row.status, row.fence_token) == ("full", "failed", 0)
    detail = row.error_detail or ""
    # Names the holder as operators see it (host:pid:…), never the value that releases it.
    assert detail.startswith(f"lock held: lock:g2a:sync is held by {holder_label(value)}")
    assert value not in result.stderr
    assert message == f"error: full sync locked: {detail} (sync run {row.id})"
    assert [(entry["level"], entry["run_id"]) for entry in logs
            if entry["event"] == "sync.failed"] == [("error", str(row.id))]


def test_fenced_out_is_one_line_exit_4_and_recorded(
    sim: SimServer, session: Session, sessions: Any, redis_client: redis_lib.Redis,
) -> None:
    sim_post(sim, "/_sim/faults", {"latency_ms": 1500, "only": "listing"})  # a slow listing
    env = {**g2a_env(sim.url, sim), "LOG_FORMAT": "json"}
    proc = subprocess.Popen([KEYSYNC, "sync", "--full", "--wait", "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    newer = RedisLock(redis_client, SYNC_LOCK, 30_000, fence_key=SYNC_FENCE, sessions=sessions)
    try:
        wait_until(lambda: [r.status for r in sync_rows(session)] == ["running"], 30,
                   "the CLI's run started")
        # Its lock expires while it lists (a pause, a partition): a newer holder takes it
        # and claims a newer fencing token, as any other run would.
        redis_client.delete(SYNC_LOCK)
        assert newer.acquire()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        newer.release()
    assert proc.returncode == 4, err  # finished with errors, not "unreachable"
    assert "Traceback" not in err
    data = one_json(out)
    assert (data["status"], data["fenced_out"], data["added"]) == ("failed", True, 0)
    detail = data["error_detail"]
    assert detail.startswith("fenced out: a newer sync or stock check took lock:g2a:sync")
    assert not any(marker in detail for marker in REPRS), detail
    logs, [message] = split_stderr(err)
    assert message == f"error: full sync failed: {detail} (sync run {data['run_id']})"
    assert any(e["level"] == "error" and e["event"] == "sync.fenced_out" for e in logs)
    [row] = sync_rows(session)
    assert (str(row.id), row.status, row.error_detail) == (data["run_id"], "failed", detail)


def test_g2a_failing_run_is_one_readable_line_exit_5(sim: SimServer, session: Session) -> None:
    env = {**g2a_env(sim.url, sim), "LOG_FORMAT": "json"}
    assert full_sync(env)[0] == 0
    sim_post(sim, "/_sim/faults", {"status": 500, "only": "listing"})
    result = keysync("sync", "--wait", env=env)  # incremental: an updated_at range
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr
    _, [message] = split_stderr(result.stderr)
    row = sync_rows(session)[-1]
    assert (row.kind, row.status) == ("incremental", "failed")
    detail = row.error_detail or ""
    assert detail.startswith("page 1 of range updated since ") and "HTTP 500" in detail
    assert not any(marker in detail for marker in REPRS), detail
    assert message == f"error: incremental sync failed: {detail} (sync run {row.id})"
    assert "incremental sync: failed" in result.stdout  # the summary table still prints
