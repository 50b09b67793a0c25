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

from db.models import Game
from g2a_sim import SimServer
from keysync.embedded import free_port
from services.locks import SYNC_LOCK

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
    redis_client.set(SYNC_LOCK, "another-run", px=30_000)
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
