"""Shared pieces of the fault suite: real processes, real restarts, figures, invariants.

Nothing here fakes our code: workers and schedulers are `keysync worker` / `keysync
scheduler` processes, outages are real servers stopped and started again, and the G2A side
is the simulator over HTTP. Waits are on conditions with deadlines, never bare sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import select

from db.models import SyncRun
from g2a_sim.server import SimServer
from keysync.embedded import EmbeddedRedis
from services.g2a import G2AClient, RateLimiter
from services.ops import invariants
from tests.helpers import wait_until

KEYSYNC = str(Path(sys.executable).with_name("keysync"))
ROOT = Path(__file__).resolve().parents[2]


# --- figures -------------------------------------------------------------------------------


@dataclass
class Figures:
    """What one scenario did, reported in the session summary and `last_run.json`."""

    scenario: str
    requests: int = 0  # HTTP requests / events / messages we sent
    faults: int = 0  # outages, kills and injected G2A faults
    violations: int = 0  # invariant violations found (must stay 0)
    invariant_runs: int = 0
    cache_entries_compared: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    outcome: str = "passed"


def check_invariants(
    figures: Figures,
    sessions: Any,
    *,
    sim: SimServer | None = None,
    cache_redis: redis_lib.Redis | None = None,
) -> invariants.InvariantReport:
    """Run the checker (all webhooks settled, G2A payments cross-checked, cache compared)
    and record the result; the caller asserts `report.ok`."""
    paid = sim_stats(sim)["orders_paid"] if sim is not None else None
    with sessions() as session:
        report = invariants.check(session, paid_g2a_orders=paid, webhook_grace=False,
                                  cache_redis=cache_redis)
    figures.invariant_runs += 1
    figures.violations += sum(len(v) for v in report.violations.values())
    figures.cache_entries_compared += report.cache_entries_compared
    assert not report.skipped, report.skipped
    return report


# --- waiting -------------------------------------------------------------------------------


# --- the simulator -------------------------------------------------------------------------


def sim_stats(sim: SimServer) -> dict[str, Any]:
    return dict(httpx.get(sim.url + "/_sim/stats", timeout=5).json())


def sim_faults(sim: SimServer, **fault: Any) -> None:
    httpx.post(sim.url + "/_sim/faults", json=fault, timeout=5).raise_for_status()


def sim_clear(sim: SimServer) -> None:
    httpx.delete(sim.url + "/_sim/faults", timeout=5).raise_for_status()


# Our shared G2A rate limit in these tests: far above anything they send, because the
# simulator runs unthrottled and the 429s a scenario needs are injected.
RATE_LIMIT_PER_MIN = 600_000


def g2a_env(sim: SimServer) -> dict[str, str]:
    return {
        "G2A_API_URL": sim.url,
        "G2A_EMAIL": sim.config.email,
        "G2A_API_HASH": sim.config.api_hash,
        "G2A_API_SECRET": sim.config.api_secret,
        "G2A_RATE_LIMIT_PER_MIN": str(RATE_LIMIT_PER_MIN),
    }


def sim_g2a_client(http: httpx.Client, sim: SimServer, redis: redis_lib.Redis,
                   **retry: Any) -> G2AClient:
    """Our G2A client for `sim`, paced by the Redis limiter as in a process of ours;
    `retry`: the client's `max_attempts`, `base_wait_s`, `max_wait_s`."""
    return G2AClient(http, email=sim.config.email, api_hash=sim.config.api_hash,
                     api_secret=sim.config.api_secret,
                     rate_limiter=RateLimiter(redis, RATE_LIMIT_PER_MIN), **retry)


def sync_runs(sessions: Any) -> list[SyncRun]:
    """Every `sync_runs` row, oldest first."""
    with sessions() as session:
        return list(session.scalars(select(SyncRun).order_by(SyncRun.started_at)))


def catalog_differences(sessions: Any, sim: SimServer, markup: Decimal = Decimal("2")
                        ) -> list[str]:
    """Where our active games disagree with the simulator's catalog (empty when synced)."""
    from sqlalchemy import select

    from db.models import Game
    from services.catalog import shop_price

    with sessions() as session:
        games = {g.g2a_product_id: g for g in session.scalars(
            select(Game).where(Game.is_active.is_(True)))}
    problems: list[str] = []
    for pid in sim.state.ids:
        product = sim.state.products[pid]
        cents = product.retail_min_price if product.retail_min_price is not None \
            else product.min_price
        game = games.pop(str(pid), None)
        if game is None:
            problems.append(f"{pid}: missing")
            continue
        g2a_price = Decimal(cents) / 100
        if (game.g2a_price, game.price, game.g2a_qty) != (
                g2a_price, shop_price(g2a_price, markup), product.qty):
            problems.append(f"{pid}: {game.g2a_price}/{game.price}/{game.g2a_qty} vs "
                            f"{g2a_price}/{shop_price(g2a_price, markup)}/{product.qty}")
    problems += [f"{pid}: active but gone from G2A" for pid in games]
    return problems


# --- processes -----------------------------------------------------------------------------


def redis_env(server: EmbeddedRedis) -> dict[str, str]:
    """The environment of a keysync process using `server` as cache, locks and broker."""
    return {"REDIS_URL": server.url, "BROKER_URL": server.url}


class Proc:
    """A keysync process in its own process group (dramatiq forks children)."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.popen = subprocess.Popen(
            args, env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, cwd=ROOT,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self) -> None:
        """SIGKILL the whole group: no shutdown hooks, no acks, nothing released."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)
        self._log.close()

    def stop(self, timeout_s: float = 15.0) -> int | None:
        if self.popen.poll() is None:
            # To the main process only: dramatiq's forwards it to its workers itself.
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # stray children of the group
        self._log.close()
        return self.popen.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def worker_ids(client: redis_lib.Redis) -> set[bytes]:
    """Broker ids of the dramatiq workers that have sent a heartbeat."""
    return set(client.zrange("dramatiq:__heartbeats__", 0, -1))


def start_worker(tmp: Path, client: redis_lib.Redis, env: Mapping[str, str], *,
                 threads: int = 2, name: str = "worker") -> Proc:
    """`keysync worker` with one process; returns once it polls the broker."""
    before = worker_ids(client)
    proc = Proc([KEYSYNC, "worker", "--processes", "1", "--threads", str(threads)], env,
                tmp / f"{name}-{time.monotonic_ns()}.log")

    def polling() -> bool:
        assert proc.popen.poll() is None, proc.output()
        return bool(worker_ids(client) - before)

    wait_until(polling, 30, "worker heartbeat")
    return proc


def redeliver_from_dead_workers(
    url: str, client: redis_lib.Redis, live: frozenset[bytes] = frozenset(), *,
    heartbeat_timeout_ms: int = 1000,
) -> int:
    """Run dramatiq's own queue maintenance now, with a short heartbeat timeout.

    The Redis broker moves the unacked messages of workers whose heartbeat is older than
    its timeout back to their queue, during maintenance that runs on a random 0.1 % of
    broker commands (default timeout 60 s). This runs the same Lua maintenance on every
    command (a broker with maintenance chance 1) once the dead worker's heartbeat is older
    than `heartbeat_timeout_ms`; `live` workers must have beaten more recently.
    Returns how many messages were put back.
    """
    beats = client.zrange("dramatiq:__heartbeats__", 0, -1, withscores=True)
    dead = [(worker, score) for worker, score in beats if worker not in live]
    assert dead, "no dead worker to recover"
    oldest = max(score for _, score in dead)
    wait_until(lambda: time.time() * 1000 - oldest > heartbeat_timeout_ms + 50, 10,
               "dead worker's heartbeat timeout")
    queues = ("default", "default.DQ")
    before = sum(int(client.llen(f"dramatiq:{q}")) for q in queues)
    broker = RedisBroker(url=url, heartbeat_timeout=heartbeat_timeout_ms,
                         maintenance_chance=1_000_000)
    try:
        for queue in queues:  # maintenance is per queue; any dispatch command runs it
            broker.do_qsize(queue)
    finally:
        broker.client.close()
    return sum(int(client.llen(f"dramatiq:{q}")) for q in queues) - before


def queued_messages(client: redis_lib.Redis, queue: str = "default") -> list[dict[str, Any]]:
    return [json.loads(v) for v in client.hvals(f"dramatiq:{queue}.msgs")]


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    """Stops every process appended to the list, whatever the test did."""
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


# --- the session summary -------------------------------------------------------------------

RESULTS: list[Figures] = []
_SUMMARY = {"written": False}
LAST_RUN = Path(__file__).with_name("last_run.json")


def figures_fixture(request: Any) -> Iterator[Figures]:
    """Body of the `figures` fixture each suite's conftest exposes."""
    figures = Figures(scenario=request.node.nodeid.split("/tests/", 1)[-1])
    started = time.monotonic()
    yield figures
    figures.duration_s = round(time.monotonic() - started, 2)
    report = getattr(request.node, "rep_call", None)
    figures.outcome = report.outcome if report is not None else "error"
    RESULTS.append(figures)


def write_summary(terminalreporter: Any) -> None:
    """One line per scenario, totals, and `tests/faults/last_run.json` (once per session)."""
    if _SUMMARY["written"] or not RESULTS:
        return
    _SUMMARY["written"] = True
    tr = terminalreporter
    tr.section("fault, fuzz and security figures")
    for f in RESULTS:
        notes = " ".join(f"{k}={v}" for k, v in f.notes.items())
        tr.write_line(
            f"{f.outcome:7} {f.scenario}: requests={f.requests} faults={f.faults} "
            f"invariant_runs={f.invariant_runs} violations={f.violations} "
            f"cache_compared={f.cache_entries_compared} {f.duration_s}s {notes}".rstrip()
        )
    totals = {
        "scenarios": len(RESULTS),
        "passed": sum(f.outcome == "passed" for f in RESULTS),
        "requests": sum(f.requests for f in RESULTS),
        "faults": sum(f.faults for f in RESULTS),
        "invariant_runs": sum(f.invariant_runs for f in RESULTS),
        "violations": sum(f.violations for f in RESULTS),
        "cache_entries_compared": sum(f.cache_entries_compared for f in RESULTS),
        "duration_s": round(sum(f.duration_s for f in RESULTS), 1),
    }
    tr.write_line("TOTAL " + " ".join(f"{k}={v}" for k, v in totals.items()))
    LAST_RUN.write_text(json.dumps({
        "totals": totals,
        "scenarios": [f.__dict__ for f in RESULTS],
    }, indent=2, default=str) + "\n")


