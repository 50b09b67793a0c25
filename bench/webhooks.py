"""Webhook throughput of the product: intake, processing and end to end, as deployed.

Every party is its own process, against throwaway Postgres/Redis (or DATABASE_URL /
REDIS_URL): `keysync serve` (the web), `keysync worker` (the processing), and a load client
far cheaper than the server (`bench/_load.py`: pre-signed requests over raw keep-alive
sockets from forked processes). In the same run, on the same Redis, a no-op dramatiq actor
(`bench/_noop_actor.py`, run by `dramatiq` in its own process with the same process and
thread counts) gives the reference for each phase:

a. intake alone (no worker running): signed `order.status_changed` (FAILED) events POSTed to
   `/webhooks/g2a`, accepted/s and latency; beside it the no-op's send rate and `GET /healthz`.
   Every stored event's job must then reach the broker: one left to the sweeper (not run
   here) means the web's sender fell behind the burst, and the run fails saying so;
b. processing alone: the worker starts on the events phase a stored (through the real
   intake, so their messages are queued as in production), processed/s from the first event
   processed to the last; beside it the no-op draining as many pre-queued messages;
c. end to end: new events POSTed while the worker runs, accepted → `processed_at`; beside it
   the no-op sent and run concurrently.

CPU seconds per event of each process (web, worker, client, Postgres, Redis) come from
/proc/<pid>/stat, process trees included. Each event refunds a different order of its own
user, so this measures the pipeline, not one row's lock; every refund is checked to have
happened exactly once at the end.

Postgres transactions committed per event (pg_stat_database, less this script's own
queries; pool pings and the intake's inserts included) show the worker's group commit
(`services.webhooks.batch`): below 1 when events share a transaction.

Usage: python bench/webhooks.py [--events 3000] [--worker-processes 2] [--threads 4]
                                [--connections 32] [--client-processes 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._load import LoadResult, http_request, run_load
from bench._support import (
    cpu_seconds,
    percentiles,
    print_table,
    servers_in_env,
    wait_http,
)

ROOT = Path(__file__).resolve().parent.parent
WARMUP_EVENTS = 200
HEALTHZ_REQUESTS = 5000


@dataclass
class Phase:
    name: str
    label: str  # in the CPU table
    rate: float
    reference: str
    reference_rate: float
    p50_ms: float | None = None
    p95_ms: float | None = None
    cpu_ms: dict[str, float] | None = None  # process -> CPU ms per event
    commits: float | None = None  # Postgres transactions committed per event


class Cpu:
    """CPU seconds of named process trees between `start()` and `stop()`."""

    def __init__(self, pids: dict[str, int], commits: Callable[[], int] | None = None) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}
        self.spent: dict[str, float] = {}
        self.commits = commits  # Postgres's committed-transaction counter, when given
        self.commits_before = self.committed = 0

    def start(self) -> None:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.commits_before = self.commits() if self.commits else 0

    def stop(self) -> None:
        self.spent = {name: cpu_seconds(pid) - self.before[name]
                      for name, pid in self.pids.items()}
        self.committed = self.commits() - self.commits_before if self.commits else 0

    def per_event_ms(self, events: int, **extra_s: float) -> dict[str, float]:
        return {name: 1000 * s / events for name, s in {**self.spent, **extra_s}.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3000, help="events per phase")
    parser.add_argument("--worker-processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=4,
                        help="threads per worker process (keysync worker's default)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--client-processes", type=int, default=2)
    args = parser.parse_args()
    with ExitStack() as stack:
        stack.enter_context(servers_in_env())
        run(args, stack)


@contextmanager
def process(cmd: list[str], **env: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def drain(done: Callable[[], int], total: int, cpu: Cpu, timeout_s: float = 120.0) -> float:
    """Rate from the first completion to `total` completions; CPU measured over that window."""
    deadline = time.monotonic() + timeout_s
    start_count = done()
    while (count := done()) == start_count:
        if time.monotonic() > deadline:
            raise SystemExit("nothing was processed")
        time.sleep(0.005)
    first, first_count = time.monotonic(), count
    cpu.start()
    while (count := done()) < total:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {count}/{total} processed")
        time.sleep(0.02)
    elapsed = time.monotonic() - first
    cpu.stop()
    return (total - first_count) / elapsed


def seed(database_url: str, count: int) -> list[uuid.UUID]:
    """`count` PROCESSING orders of 1.00, each of its own user, with their PURCHASE."""
    import psycopg

    users = [uuid.uuid4() for _ in range(count)]
    orders = [uuid.uuid4() for _ in range(count)]
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn, conn.cursor() as cur:
        game = uuid.uuid4()
        cur.execute("INSERT INTO games (id, g2a_product_id, slug, name, price, g2a_price, "
                    "in_stock) VALUES (%s, '1', 'bench', 'B', 1, 1, true)", (game,))
        cur.executemany("INSERT INTO users (id, email, password_hash, balance) "
                        "VALUES (%s, %s, 'x', 0)", [(u, f"{u.hex}@example.com") for u in users])
        cur.executemany("INSERT INTO orders (id, user_id, total, status) "
                        "VALUES (%s, %s, 1, 'PROCESSING')", list(zip(orders, users, strict=True)))
        cur.executemany("INSERT INTO order_items (order_id, game_id, quantity, unit_price) "
                        "VALUES (%s, %s, 1, 1)", [(o, game) for o in orders])
        cur.executemany("INSERT INTO transactions (id, user_id, order_id, type, amount, status)"
                        " VALUES (%s, %s, %s, 'PURCHASE', 1, 'COMPLETED')",
                        [(uuid.uuid4(), u, o) for u, o in zip(users, orders, strict=True)])
    return orders


def webhook_requests(order_ids: list[uuid.UUID], port: int, secret: str) -> list[bytes]:
    from g2a_sim import sign_webhook

    out = []
    now = int(time.time())  # valid for ±300 s: the whole run fits well inside
    for order_id in order_ids:
        msg_id = f"msg_{uuid.uuid4().hex}"
        body = (b'{"type":"order.status_changed","data":{"order_id":"%s","status":"FAILED",'
                b'"occurred_at":"2026-01-01T00:00:00Z"}}' % str(order_id).encode())
        out.append(http_request("POST", "/webhooks/g2a", port, {
            "webhook-id": msg_id, "webhook-timestamp": str(now),
            "webhook-signature": sign_webhook(secret, msg_id, now, body),
            "content-type": "application/json"}, body))
    return out


def run(args: argparse.Namespace, stack: ExitStack) -> None:
    import psycopg
    import redis
    from dramatiq import Message
    from dramatiq.brokers.redis import RedisBroker

    from bench._noop_actor import DONE_KEY, QUEUE
    from keysync.embedded import free_port

    n, database_url = args.events, os.environ["DATABASE_URL"]
    secret = os.environ["WEBHOOK_SECRETS"].split()[0]
    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    r.flushdb()
    orders = seed(database_url, WARMUP_EVENTS + 2 * n)
    db = stack.enter_context(psycopg.connect(database_url.replace("+psycopg", ""),
                                             autocommit=True))

    own_queries = 0  # each one an autocommit transaction of its own, not the product's

    def scalar(sql: str) -> Any:
        nonlocal own_queries
        own_queries += 1
        row = db.execute(sql).fetchone()
        assert row is not None
        return row[0]

    def processed() -> int:
        return int(scalar("SELECT count(*) FROM webhook_events") -
                   scalar("SELECT count(*) FROM webhook_events WHERE processed_at IS NULL"))

    def commits() -> int:
        return int(scalar("SELECT xact_commit FROM pg_stat_database "
                          "WHERE datname = current_database()")) - own_queries

    postgres_pid = int(Path(f"/proc/{scalar('SELECT pg_backend_pid()')}/stat").read_text()
                       .rpartition(")")[2].split()[1])  # the backend's parent: postmaster
    infra = {"postgres": postgres_pid, "redis": int(r.info("server")["process_id"])}
    workers = ["--processes", str(args.worker_processes), "--threads", str(args.threads)]
    bin_dir = Path(sys.executable).parent
    pythonpath = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)
    phases: list[Phase] = []

    # -- the no-op reference: send N, drain N pre-queued, then send and run N concurrently --
    noop_broker = RedisBroker(url=os.environ["BROKER_URL"])  # type: ignore[no-untyped-call]
    stack.callback(noop_broker.close)

    def send_noop(count: int) -> float:
        started = time.monotonic()
        for i in range(count):
            noop_broker.enqueue(Message(queue_name=QUEUE, actor_name="bench_noop", args=(i,),
                                        kwargs={}, options={}))
        return count / (time.monotonic() - started)

    def noop_done() -> int:
        return int(r.get(DONE_KEY) or 0)

    noop_send_rate = send_noop(n)
    with process([str(bin_dir / "dramatiq"), "bench._noop_actor", *workers],
                 PYTHONPATH=pythonpath) as noop_worker:
        noop_cpu = Cpu({"worker": noop_worker.pid, **infra})
        noop_drain_rate = drain(noop_done, n, noop_cpu)
        noop_drain_cpu = noop_cpu.per_event_ms(n)
        started = time.monotonic()
        send_noop(n)
        drain(noop_done, 2 * n, Cpu({}))
        noop_e2e_rate = n / (time.monotonic() - started)

    # -- the product ---------------------------------------------------------------------
    port = free_port()
    web = stack.enter_context(process([str(bin_dir / "keysync"), "serve", "--port", str(port)]))
    wait_http(f"http://127.0.0.1:{port}/healthz")
    requests = webhook_requests(orders, port, secret)
    warmup, phase_a, phase_c = (requests[:WARMUP_EVENTS], requests[WARMUP_EVENTS:][:n],
                                requests[WARMUP_EVENTS + n:])
    expect(run_load(port, warmup, processes=args.client_processes,
                    connections=args.connections), 202, WARMUP_EVENTS)
    healthz = run_load(port, [http_request("GET", "/healthz", port)] * HEALTHZ_REQUESTS,
                       processes=args.client_processes, connections=args.connections)

    # a. intake alone: nothing consumes the queue yet
    cpu = Cpu({"web": web.pid, **infra})
    cpu.start()
    intake = expect(run_load(port, phase_a, processes=args.client_processes,
                             connections=args.connections), 202, n)
    cpu.stop()
    # Every stored event's job reaches the broker, none is left to the sweeper (which this
    # benchmark does not run): the web's sender keeps up with the burst.
    stored = WARMUP_EVENTS + n
    queued = wait_for(lambda: r.llen("dramatiq:default") >= stored, 30)
    if not queued:
        raise SystemExit(f"{stored - r.llen('dramatiq:default')} of {stored} jobs left to the "
                         "sweeper: the web's sender fell behind the intake")
    p50, p95, _ = percentiles(intake.latencies_s)
    phases.append(Phase("a. intake alone: accepted/s (POST → 202)", "a. intake", intake.rate(202),
                        "no-op send", noop_send_rate, p50, p95,
                        cpu.per_event_ms(n, client=intake.cpu_s)))
    phases.append(Phase("   reference: GET /healthz, same client and server", "GET /healthz",
                        healthz.rate(),
                        "", 0.0, *percentiles(healthz.latencies_s)[:2],
                        {"client": 1000 * healthz.cpu_s / HEALTHZ_REQUESTS}))

    # b. processing alone: the worker starts on the stored events, their messages queued
    with process([str(bin_dir / "keysync"), "worker", *workers]) as worker:
        cpu = Cpu({"worker": worker.pid, "web": web.pid, **infra}, commits)
        rate = drain(processed, stored, cpu)
        phases.append(Phase("b. processing alone: processed/s (stored → processed_at)",
                            "b. processing", rate,
                            "no-op drain", noop_drain_rate,
                            cpu_ms={**cpu.per_event_ms(stored), **{
                                f"no-op {k}": v for k, v in noop_drain_cpu.items()}},
                            commits=cpu.committed / stored))

        # c. end to end: accepted → processed while both run
        cpu.start()
        started = time.monotonic()
        e2e = expect(run_load(port, phase_c, processes=args.client_processes,
                              connections=args.connections), 202, n)
        while processed() < stored + n:
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        cpu.stop()
        phases.append(Phase("c. end to end: accepted → processed_at, events/s", "c. end to end",
                            n / elapsed,
                            "no-op send → run", noop_e2e_rate, *percentiles(e2e.latencies_s)[:2],
                            cpu.per_event_ms(n, client=e2e.cpu_s), cpu.committed / n))
        phases.append(Phase("   accepted/s meanwhile", "", e2e.rate(202), "", 0.0))

    check_exactly_once(scalar, WARMUP_EVENTS + 2 * n)
    report(args, phases)


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def expect(result: LoadResult, status: int, count: int) -> LoadResult:
    if result.statuses[status] != count:
        raise SystemExit(f"expected {count} x {status}, got {dict(result.statuses)}")
    return result


def check_exactly_once(scalar: Callable[[str], Any], events: int) -> None:
    refunds = scalar("SELECT count(*) FROM transactions WHERE type = 'REFUND'")
    balance = scalar("SELECT sum(balance) FROM users")
    if refunds != events or balance != events:
        raise SystemExit(f"{events} events: {refunds} refunds, balances {balance}")


def report(args: argparse.Namespace, phases: list[Phase]) -> None:
    print(f"{args.events} events per phase; `keysync worker` and the no-op actor each with "
          f"{args.worker_processes} processes x {args.threads} threads; client: "
          f"{args.client_processes} processes, {args.connections} keep-alive connections; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end")
    print_table(
        "Webhooks, as deployed (separate processes), each beside a no-op dramatiq actor",
        ["phase", "ours /s", "no-op", "no-op /s", "ratio", "p50 ms", "p95 ms"],
        [[p.name, f"{p.rate:,.0f}", p.reference,
          f"{p.reference_rate:,.0f}" if p.reference_rate else "",
          f"{p.rate / p.reference_rate:.2f}" if p.reference_rate else "",
          "" if p.p50_ms is None else f"{p.p50_ms:.1f}",
          "" if p.p95_ms is None else f"{p.p95_ms:.1f}"] for p in phases])
    names = ["web", "worker", "client", "postgres", "redis", "no-op worker", "no-op postgres",
             "no-op redis"]
    print_table(
        "CPU ms per event, by process (process trees; /proc/<pid>/stat)",
        ["phase", *names, "pg tx/event"],
        [[p.label, *(f"{p.cpu_ms[k]:.2f}" if k in p.cpu_ms else ""
                                          for k in names),
          "" if p.commits is None else f"{p.commits:.2f}"]
         for p in phases if p.cpu_ms])


if __name__ == "__main__":
    main()
