"""Login-triggered guest migration: latency from the login response to the migration commit.

1,000 logins (default) per load level (1 client = logins one after another, 8 clients = a
burst), each with a guest session holding a 5-item cart, measured two ways in one run:
- queued (what production does): login enqueues `migrate_guest_data` on the real Redis
  broker and answers; a worker in its own process tree, as `keysync worker` runs it
  (`dramatiq jobs` with its defaults: one process per core, 4 threads), runs the
  migration. A middleware loaded into that worker (`bench/_migration_clock.py`) stamps in
  Redis the wall-clock time each migration finished (after commit and cache invalidation),
  matched to its login by session id.
- inline (baseline): the broker is unreachable, so login migrates before answering; the
  commit precedes the response, and the cost moves into the login latency instead.

Logins call `services.accounts.auth.login` directly from client threads (no HTTP) with cheap
argon2 parameters, so the figures are about the migration path, not password hashing.

Usage: python bench/login_migration.py [--logins 1000] [--clients 1 8] [--processes N]
       [--worker-threads 4]
Starts throwaway Postgres/Redis via keysync.embedded unless DATABASE_URL/REDIS_URL are set.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import percentiles, postgres_server, print_table, redis_server
from bench._worker_proc import worker_process
from keysync.logging import configure_logging

ITEMS = 5


def seed(sessions: Any, prefix: str, count: int, game_ids: list[uuid.UUID],
         password_hash: str) -> list[tuple[str, str]]:
    """`count` users with a guest session each holding a cart of every game."""
    from sqlalchemy import insert

    from db.models import CartItem, User

    # Guest session ids are 22-128 characters (CONTRACT §5), like the API hands out.
    logins = [(f"{prefix}{i}@bench.example", f"{prefix}-sid-{i}-{uuid.uuid4().hex}")
              for i in range(count)]
    with sessions() as session, session.begin():
        session.execute(insert(User), [
            {"email": email, "password_hash": password_hash, "name": ""} for email, _ in logins
        ])
        session.execute(insert(CartItem), [
            {"session_id": sid, "game_id": game_id, "quantity": 1 + n % 3}
            for _, sid in logins for n, game_id in enumerate(game_ids)
        ])
    return logins


def run_logins(resources: Any, broker: Any, logins: list[tuple[str, str]], clients: int,
               hasher: Any) -> dict[str, tuple[float, float, str]]:
    """session id -> (request start, response time, migration outcome)."""
    from services.accounts import auth

    def one(login: tuple[str, str]) -> tuple[str, tuple[float, float, str]]:
        email, sid = login
        started = time.time()  # wall clock: compared with the worker process's stamps
        result = auth.login(resources.sessions, resources.cache, broker, resources.settings,
                            email=email, password="bench-password", session_id=sid,
                            hasher=hasher)
        return sid, (started, time.time(), result.migration)

    with ThreadPoolExecutor(clients) as pool:
        return dict(pool.map(one, logins))


def wait_committed(redis: Any, sids: Any, timeout_s: float = 300) -> dict[str, float]:
    """Session id -> wall-clock time its migration committed, once every one of `sids` has."""
    from bench._migration_clock import COMMITTED_KEY

    wanted, deadline = set(sids), time.monotonic() + timeout_s
    while True:
        stamps = {k.decode(): float(v) for k, v in redis.hgetall(COMMITTED_KEY).items()}
        if wanted <= stamps.keys():
            return stamps
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(wanted - stamps.keys())} migrations never committed")
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--logins", type=int, default=1000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8],
                        help="concurrent login threads; one pair of rows per value")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: keysync worker's, one per core)")
    parser.add_argument("--worker-threads", type=int, default=4)
    args = parser.parse_args()
    # The baseline logs one "broker unavailable" warning per login by design.
    configure_logging("console", os.environ.get("LOG_LEVEL", "ERROR"))

    with postgres_server() as database_url, redis_server() as redis_url:
        # Before anything reads settings: the worker package binds the broker at import.
        os.environ.update(DATABASE_URL=database_url, REDIS_URL=redis_url, BROKER_URL=redis_url,
                          LOG_LEVEL=os.environ.get("LOG_LEVEL", "ERROR"))
        from argon2 import PasswordHasher
        from sqlalchemy import func, insert, select

        from db.models import CartItem, Game
        from jobs import broker  # declares the actors on it
        from keysync.embedded import free_port
        from keysync.resources import Resources
        from keysync.settings import get_settings
        from worker.broker import create_broker
        from worker.enqueue import Actor, send_now

        settings = get_settings()
        resources = Resources.build(settings, broker, pool_size=max(args.clients))
        hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
        password_hash = hasher.hash("bench-password")
        with resources.sessions() as session, session.begin():
            game_ids = list(session.scalars(insert(Game).returning(Game.id), [
                {"g2a_product_id": f"bench-{n}", "slug": f"bench-{n}", "name": f"Game {n}",
                 "price": Decimal("9.99"), "g2a_price": Decimal("9.79"), "in_stock": True}
                for n in range(ITEMS)
            ]))
        dead_broker = create_broker(f"redis://127.0.0.1:{free_port()}/0")
        rows: list[list[object]] = []
        with worker_process("bench._migration_clock", processes=args.processes,
                            threads=args.worker_threads):
            # Ready when every process has taken messages: migrations of no one, no-ops.
            warm = [f"warm-up-{n}-{uuid.uuid4().hex}" for n in range(20 * args.processes)]
            for sid in warm:
                send_now(broker, Actor.MIGRATE_GUEST_DATA, sid, str(uuid.uuid4()))
            wait_committed(resources.redis, warm, timeout_s=60)
            for clients in args.clients:
                queued_logins = seed(resources.sessions, f"q{clients}-", args.logins, game_ids,
                                     password_hash)
                inline_logins = seed(resources.sessions, f"i{clients}-", args.logins, game_ids,
                                     password_hash)
                started = time.perf_counter()
                queued = run_logins(resources, broker, queued_logins, clients, hasher)
                committed = wait_committed(resources.redis, queued)
                queued_wall = time.perf_counter() - started
                started = time.perf_counter()
                inline = run_logins(resources, dead_broker, inline_logins, clients, hasher)
                inline_wall = time.perf_counter() - started

                assert {o for _, _, o in queued.values()} == {"queued"}, "broker refused"
                assert {o for _, _, o in inline.values()} == {"done"}
                q_login = [end - start for start, end, _ in queued.values()]
                q_lag = [committed[sid] - end for sid, (_, end, _) in queued.items()]
                q_total = [committed[sid] - start for sid, (start, _, _) in queued.items()]
                i_login = [end - start for start, end, _ in inline.values()]
                for name, login, lag, total, wall in (
                    (f"queued, {clients} client(s)", q_login, q_lag, q_total, queued_wall),
                    (f"inline baseline, {clients} client(s)", i_login, [0.0], i_login,
                     inline_wall),
                ):
                    lp50, lp95, _ = percentiles(login)
                    gp50, gp95, _ = percentiles(lag)
                    tp50, tp95, _ = percentiles(total)
                    rows.append([name, lp50, lp95, gp50, gp95, tp50, tp95, args.logins / wall])

        with resources.sessions() as session, session.begin():
            guest_rows = session.scalar(select(func.count()).select_from(CartItem)
                                        .where(CartItem.session_id.is_not(None)))
            user_rows = session.scalar(select(func.count()).select_from(CartItem)
                                       .where(CartItem.user_id.is_not(None)))
        resources.close()

    expected = 2 * len(args.clients) * args.logins * ITEMS
    assert guest_rows == 0 and user_rows == expected, (guest_rows, user_rows)
    print_table(
        f"{args.logins} logins per row, {ITEMS}-item guest cart each, worker in its own "
        f"processes ({args.processes} x {args.worker_threads} threads) (ms)",
        ["mode", "login p50", "login p95", "resp→commit p50", "resp→commit p95",
         "req→commit p50", "req→commit p95", "logins/s"],
        rows,
    )
    print("resp→commit: login response to migration committed (0 inline: it commits first). "
          "logins/s includes draining the queue. All migrations committed; no guest rows left.")


if __name__ == "__main__":
    main()
