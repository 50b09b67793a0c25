"""The operations console at scale: p95 of every console page (HTML, signed in through
`/admin/login`), every `/admin/api/*` GET twin and `keysync jobs --state dead --limit 50`,
each beside the same query without its index.

Seeds 100,000 orders (with items, PURCHASE transactions and G2A purchases), 100,000
webhook events, 5,000 sync runs over 30 days, 10,000 admin actions and 10,000 dead letters
(bulk `INSERT … SELECT generate_series` and Redis pipelines), then, in the same run:
- ours: each page and twin through the app (in-process ASGI; pages with the session
  cookie `/admin/login` set, twins with an admin bearer token), server time from the
  request to the answer's last byte;
- baseline: the same request through an app whose Postgres connections have index scans
  turned off (`enable_indexscan`, `enable_indexonlyscan`, `enable_bitmapscan` = off): the
  same queries planned as if their indexes did not exist;
- jobs dead: `services.ops.jobs.list_jobs(state=dead, limit=50)` (what the CLI calls)
  against reading the whole dead set (`HGETALL` of its messages, then newest 50 in Python),
  what a listing without the sorted set's order would have to do.

`{order}` is a different completed order each request, `{open}` a stuck one (its reason
looks for its dead letter), `{event}` a webhook event. Targets: p95 <= 150 ms per page and
twin, <= 300 ms for jobs dead. Starts throwaway Postgres/Redis unless DATABASE_URL /
REDIS_URL are set.

Usage: python bench/console.py [--samples 30]  (each measurement stops early after 2 s,
with at least 8 samples; the whole run takes under 3 minutes)
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import percentiles, print_table, servers_in_env

ORDERS = 100_000
EVENTS = 100_000
SYNC_RUNS = 5_000
ADMIN_ACTIONS = 10_000
DEAD_LETTERS = 10_000
TWIN_TARGET_MS = 150.0
JOBS_TARGET_MS = 300.0
BUDGET_S = 2.0
# Every page (tab, htmx fragment) of the console, under `/admin`.
PAGES = ("", "/fragments/overview", "/jobs?state=dead", "/jobs?state=queued",
         "/jobs?state=delayed", "/jobs?state=dead&actor=fulfil_order", "/syncs",
         "/fragments/syncs-running", "/webhooks", "/webhooks?outcome=pending",
         "/webhooks?outcome=processed", "/webhooks?outcome=dead", "/webhooks/{event}",
         "/orders", "/orders?status=FAILED", "/orders?stuck=true", "/orders?page=1000",
         "/orders/{order}", "/orders/{open}", "/audit", "/audit?page=100")
# Every GET twin, under `/admin/api/`.
TWINS = ("overview", "jobs?state=dead", "jobs", "syncs", "syncs?kind=full",
         "syncs/chart?days=30", "webhooks", "webhooks?outcome=dead",
         "webhooks?outcome=pending", "orders", "orders?status=FAILED", "orders?stuck=true",
         "orders/{order}", "orders/{open}", "audit", "audit?offset=5000")
PASSWORD = "bench-console-password"
MIN_SAMPLES = 8

NO_INDEX = ("SET enable_indexscan = off; SET enable_indexonlyscan = off; "
            "SET enable_bitmapscan = off")

SEED = [
    "INSERT INTO users (id, email, password_hash, name, balance, is_admin) "
    "SELECT gen_random_uuid(), 'buyer' || i || '@example.com', 'x', 'Buyer', 100, false "
    "FROM generate_series(1, 1000) i",
    "INSERT INTO games (id, g2a_product_id, slug, name, price, g2a_price, g2a_qty, in_stock) "
    "SELECT gen_random_uuid(), 'p' || i, 'game-' || i, 'Game ' || i, 10, 9.80, 50, true "
    "FROM generate_series(1, 100) i",
    # Orders over 90 days; 1 % still open (most of them stuck), the rest final.
    """INSERT INTO orders (id, user_id, status, total, created_at, updated_at)
       SELECT gen_random_uuid(), u.id,
              CASE WHEN i % 100 = 0 THEN 'PENDING' WHEN i % 100 = 1 THEN 'PROCESSING'
                   WHEN i % 10 = 2 THEN 'FAILED' ELSE 'COMPLETED' END,
              10, t, t + interval '5 seconds'
       FROM (SELECT i, now() - (i * interval '77 seconds') AS t,
                    (i % 1000) + 1 AS n FROM generate_series(1, :orders) i) g
       JOIN (SELECT id, row_number() OVER () AS n FROM users) u ON u.n = g.n""",
    """INSERT INTO order_items (order_id, game_id, quantity, unit_price)
       SELECT o.id, (SELECT id FROM games LIMIT 1), 1, 10 FROM orders o""",
    """INSERT INTO transactions (id, user_id, order_id, type, amount, status, created_at)
       SELECT gen_random_uuid(), o.user_id, o.id, 'PURCHASE', 10, 'COMPLETED', o.created_at
       FROM orders o""",
    """INSERT INTO g2a_purchases (order_item_id, unit_index, g2a_order_id, status, price,
                                  created_at, updated_at)
       SELECT oi.id, 0, 'g2a-' || oi.id, 'DELIVERED', 9.80, o.created_at, o.updated_at
       FROM order_items oi JOIN orders o ON o.id = oi.order_id
       WHERE o.status = 'COMPLETED'""",
    # Webhook events, one per order (the newest EVENTS orders), outcomes mixed.
    """INSERT INTO webhook_events (event_id, type, payload, received_at, processed_at,
                                   attempts, outcome)
       SELECT 'msg_' || md5(o.id::text), 'order.status_changed',
              jsonb_build_object('type', 'order.status_changed', 'data',
                  jsonb_build_object('order_id', o.id::text, 'status', o.status)),
              o.created_at + interval '1 second',
              CASE WHEN row_number() OVER () % 50 IN (0, 1) THEN NULL
                   ELSE o.created_at + interval '2 seconds' END,
              1,
              CASE WHEN row_number() OVER () % 50 = 0 THEN NULL
                   WHEN row_number() OVER () % 50 = 1 THEN 'dead'
                   WHEN row_number() OVER () % 50 = 2 THEN 'ignored'
                   ELSE 'processed' END
       FROM (SELECT * FROM orders ORDER BY created_at DESC LIMIT :events) o""",
    # Sync runs over the last 30 days: stock checks mostly, a full sync every 25th.
    """INSERT INTO sync_runs (id, kind, status, fence_token, started_at, finished_at, added,
                              updated, unchanged, removed, errors, pages, requests)
       SELECT gen_random_uuid(), CASE WHEN i % 25 = 0 THEN 'full' ELSE 'stock' END,
              CASE WHEN i % 40 = 0 THEN 'failed' ELSE 'succeeded' END, i,
              now() - i * (interval '30 days' / :runs),
              now() - i * (interval '30 days' / :runs) + interval '40 seconds',
              i % 7, i % 50, 9000, i % 3, 0, 500, 520
       FROM generate_series(1, :runs) i""",
    """INSERT INTO admin_actions (actor, action, target, detail, created_at)
       SELECT 'ops@example.com', 'jobs.retry', 'dead letters: all', '{"count": 1}',
              now() - i * interval '1 minute'
       FROM generate_series(1, :actions) i""",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=30, help="requests per measurement")
    args = parser.parse_args()
    with ExitStack() as stack:
        stack.enter_context(servers_in_env())
        run(args, stack)


def seed(resources: Any) -> None:
    from sqlalchemy import text

    started = time.perf_counter()
    with resources.sessions() as s, s.begin():
        s.execute(text("TRUNCATE users, games, orders, order_items, transactions, "
                       "g2a_purchases, webhook_events, sync_runs, admin_actions, job_outbox "
                       "CASCADE"))
        for statement in SEED:
            s.execute(text(statement), {"orders": ORDERS, "events": EVENTS, "runs": SYNC_RUNS,
                                        "actions": ADMIN_ACTIONS})
    with resources.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    print(f"seeded Postgres in {time.perf_counter() - started:.1f} s")


def seed_dead_letters(client: Any) -> None:
    """Exactly what dramatiq's `nack` leaves: the member scored by death time, the body."""
    from dramatiq import Message

    client.flushdb()
    now_ms = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for i in range(DEAD_LETTERS):
        rid = f"rid-{i}"
        message = Message(queue_name="default", actor_name="fulfil_order",
                          args=(str(uuid.uuid4()),), kwargs={},
                          options={"redis_message_id": rid, "retries": 5,
                                   "traceback": "RuntimeError: G2A unreachable"})
        pipe.zadd("dramatiq:default.XQ", {rid: now_ms - DEAD_LETTERS + i})
        pipe.hset("dramatiq:default.XQ.msgs", rid, message.encode())
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


class ServerTimer:
    """ASGI wrapper: how long the app took from the request to its last body byte (what
    the server spends; the in-process client's own work is left out)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.last_s = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.last_s = time.perf_counter() - started

        await self.app(scope, receive, timed)


def sample(call: Callable[[], float], samples: int) -> float:
    """p95 in ms of what `call` reports (after one warm-up call): `samples` calls, or as
    many as fit in BUDGET_S (at least MIN_SAMPLES), so slow baselines keep the run short."""
    call()
    times: list[float] = []
    deadline = time.perf_counter() + BUDGET_S
    while len(times) < samples and (len(times) < MIN_SAMPLES or time.perf_counter() < deadline):
        times.append(call())
    return percentiles(times)[1]


def timed(call: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    return run


def sign_in(client: Any) -> None:
    """Through the sign-in form, as a browser does: its double-submit CSRF cookie and field,
    then the session cookie the console sets."""
    form = client.get("/admin/login")
    match = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert form.status_code == 200 and match, form.text
    answer = client.post("/admin/login", follow_redirects=False, data={
        "email": "ops@example.com", "password": PASSWORD, "csrf": match.group(1),
        "next": "/admin"})
    assert answer.status_code == 303, answer.text


def run(args: argparse.Namespace, stack: ExitStack) -> None:
    # Imported only now: importing `worker` binds the broker to BROKER_URL.
    from fastapi.testclient import TestClient
    from sqlalchemy import event, select, text

    from db.models import Order, OrderStatus, WebhookEvent
    from jobs import broker
    from keysync.resources import Resources
    from keysync.settings import get_settings
    from services.accounts import tokens
    from services.accounts.passwords import hash_password
    from services.ops import jobs as ops_jobs
    from services.ops.schemas import JobState
    from web.app import create_app

    started = time.perf_counter()
    settings = get_settings()
    ours = Resources.build(settings, broker, pool_size=2)
    stack.callback(ours.close)
    baseline = Resources.build(settings, broker, pool_size=2)
    stack.callback(baseline.close)

    @event.listens_for(baseline.engine, "connect")
    def _no_index(dbapi_connection: Any, _: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            for statement in NO_INDEX.split("; "):
                cursor.execute(statement)
        dbapi_connection.commit()

    seed(ours)
    seed_dead_letters(ours.broker.client)
    with ours.sessions() as s, s.begin():
        admin_id = s.execute(text(
            "INSERT INTO users (id, email, password_hash, is_admin) VALUES "
            "(gen_random_uuid(), 'ops@example.com', :hash, true) RETURNING id"),
            {"hash": hash_password(PASSWORD)}).scalar_one()
    token = tokens.issue(admin_id, settings.jwt_secret.get_secret_value(), 3600)
    auth = {"Authorization": f"Bearer {token}"}
    with ours.sessions() as s:
        ids = {
            "{order}": [str(i) for i in s.scalars(
                select(Order.id).order_by(Order.created_at).offset(ORDERS // 3).limit(200))],
            "{open}": [str(i) for i in s.scalars(
                select(Order.id).where(Order.status == OrderStatus.PENDING).limit(200))],
            "{event}": list(s.scalars(select(WebhookEvent.event_id).limit(200))),
        }

    def path_of(template: str) -> str:
        for name, choices in ids.items():
            template = template.replace(name, random.choice(choices))
        return template

    requests = ([("/admin" + page, {}) for page in PAGES]
                + [("/admin/api/" + twin, auth) for twin in TWINS])
    rows: list[list[object]] = []
    fast_app, slow_app = ServerTimer(create_app(ours)), ServerTimer(create_app(baseline))
    with TestClient(fast_app) as fast, TestClient(slow_app) as slow:
        sign_in(fast)
        sign_in(slow)
        for template, headers in requests:
            def get(client: TestClient, timer: ServerTimer, template: str = template,
                    headers: dict[str, str] = headers) -> float:
                answer = client.get(path_of(template), headers=headers,
                                    follow_redirects=False)
                assert answer.status_code == 200, (template, answer.status_code, answer.text)
                return timer.last_s

            p95 = sample(lambda: get(fast, fast_app), args.samples)
            base = sample(lambda: get(slow, slow_app), args.samples)
            rows.append([template, p95, base, f"{base / p95:.1f}x",
                         "ok" if p95 <= TWIN_TARGET_MS else "OVER"])

    client = ours.broker.client

    def naive_dead() -> None:
        # The whole dead set read and decoded, the newest 50 kept: no window on the set.
        from dramatiq import Message

        ids = client.zrevrange("dramatiq:default.XQ", 0, -1)
        bodies = client.hmget("dramatiq:default.XQ.msgs", ids)
        messages = [Message.decode(body) for body in bodies if body]
        del messages[50:]

    def ours_dead() -> None:
        listed = ops_jobs.list_jobs(client, state=JobState.DEAD, limit=50)
        assert listed.total == DEAD_LETTERS and len(listed.items) == 50

    p95 = sample(timed(ours_dead), args.samples)
    base = sample(timed(naive_dead), args.samples)
    rows.append(["keysync jobs --state dead --limit 50", p95, base, f"{base / p95:.1f}x",
                 "ok" if p95 <= JOBS_TARGET_MS else "OVER"])
    print_table(
        f"console at scale: {ORDERS:,} orders, {EVENTS:,} webhook events, {SYNC_RUNS:,} sync "
        f"runs, {DEAD_LETTERS:,} dead letters ({args.samples} requests each; targets "
        f"{TWIN_TARGET_MS:.0f} / {JOBS_TARGET_MS:.0f} ms; run took "
        f"{time.perf_counter() - started:.0f} s)",
        ["GET (pages, /admin/api twins) or command", "p95 ms", "no index p95 ms", "ratio",
         "target"], rows)


if __name__ == "__main__":
    main()
