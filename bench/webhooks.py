"""Webhook throughput: events/s from HTTP accept to processed, vs a no-op dramatiq actor.

In one run, on the same Redis broker and the same in-process dramatiq worker (same thread
count):
- baseline: N messages to a no-op actor, from `send` to executed;
- webhooks: N signed `order.status_changed` (FAILED) events POSTed to `keysync serve` (its
  own process; `POST /webhooks/g2a`: verify, inbox insert, send), then processed by
  `process_webhook_event` (event lock, order lock, refund exactly once, mark processed,
  cache invalidation), measured until every event has `processed_at`.

Each event hits a different order, so this measures the pipeline, not lock contention.
Starts throwaway Postgres/Redis unless DATABASE_URL / REDIS_URL are set.

Usage: python bench/webhooks.py [--events 1000] [--threads 8] [--clients 16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import percentiles, postgres_server, print_table, redis_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=8, help="dramatiq worker threads")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP senders")
    args = parser.parse_args()

    with ExitStack() as stack:
        redis_url = stack.enter_context(redis_server())
        database_url = stack.enter_context(postgres_server())
        os.environ.update(DATABASE_URL=database_url, REDIS_URL=redis_url, BROKER_URL=redis_url,
                          LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"))
        os.environ.setdefault(
            "WEBHOOK_SECRETS", "whsec_" + "YmVuY2gtd2ViaG9vay1zZWNyZXQtYmVuY2gtd2ViaG9vaw==")
        run(args, stack)


def run(args: argparse.Namespace, stack: ExitStack) -> None:
    # Imported only now: importing `worker` binds the broker to BROKER_URL.
    import dramatiq
    import httpx
    import redis
    from sqlalchemy import func, insert, select, text

    from db.models import Game, Order, OrderItem, OrderStatus, Transaction, User, WebhookEvent
    from g2a_sim import sign_webhook
    from jobs import broker  # declares every actor on it
    from keysync.embedded import free_port
    from keysync.resources import Resources
    from keysync.settings import get_settings

    settings = get_settings()
    secret = settings.webhook_secrets.get_secret_value().split()[0]
    resources = Resources.build(settings, broker, pool_size=args.threads + args.clients)
    stack.callback(resources.close)
    redis.Redis.from_url(settings.redis_url).flushdb()
    n = args.events

    with resources.sessions() as s, s.begin():
        s.execute(text("TRUNCATE users, games, orders, order_items, transactions, "
                       "webhook_events, job_outbox CASCADE"))
        # One user per order: the refund's balance update would otherwise serialise every
        # event on one user row, and this measures the pipeline, not that lock.
        game_id = uuid.uuid4()
        user_ids = [uuid.uuid4() for _ in range(n)]
        s.execute(insert(User), [{"id": u, "email": f"{u.hex}@example.com", "password_hash": "x",
                                  "balance": 0} for u in user_ids])
        s.execute(insert(Game).values(id=game_id, g2a_product_id="1", slug="bench", name="B",
                                      price=1, g2a_price=1, in_stock=True))
        order_ids = [uuid.uuid4() for _ in range(n)]
        s.execute(insert(Order), [{"id": o, "user_id": u, "total": 1,
                                   "status": OrderStatus.PROCESSING}
                                  for o, u in zip(order_ids, user_ids, strict=True)])
        s.execute(insert(OrderItem), [{"order_id": o, "game_id": game_id, "quantity": 1,
                                       "unit_price": 1} for o in order_ids])
        s.execute(insert(Transaction), [{"user_id": u, "order_id": o, "type": "PURCHASE",
                                         "amount": 1, "status": "COMPLETED"}
                                        for o, u in zip(order_ids, user_ids, strict=True)])

    done = threading.Semaphore(0)
    latencies: list[float] = []

    @dramatiq.actor(broker=broker, queue_name="bench_noop", max_retries=0)
    def bench_noop(sent_at: float) -> None:
        latencies.append(time.time() - sent_at)
        done.release()

    worker = dramatiq.Worker(broker, worker_threads=args.threads, worker_timeout=100)
    worker.start()
    stack.callback(worker.stop)

    # -- baseline: a no-op actor on the same broker and worker -----------------------------
    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(lambda _: bench_noop.send(time.time()), range(n)))
    for _ in range(n):
        done.acquire()
    noop_s = time.perf_counter() - started
    noop_p = percentiles(latencies)

    # -- webhooks: HTTP accept -> processed ------------------------------------------------
    # The web app runs as its own `keysync serve` process, as deployed (Procfile), so the
    # accept path does not share this process's GIL with the worker threads.
    port = free_port()
    keysync = os.path.join(os.path.dirname(sys.executable), "keysync")
    web = subprocess.Popen([keysync, "serve", "--port", str(port)], env=os.environ.copy(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(web.wait, 10)
    stack.callback(web.terminate)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(base + "/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("keysync serve did not start")
        time.sleep(0.1)
    url = base + "/webhooks/g2a"

    bodies = []
    for order_id in order_ids:
        msg_id = f"msg_{uuid.uuid4().hex}"
        body = (b'{"type":"order.status_changed","data":{"order_id":"%s","status":"FAILED",'
                b'"occurred_at":"2026-01-01T00:00:00Z"}}' % str(order_id).encode())
        bodies.append((msg_id, body))

    accepted = 0
    http = httpx.Client(limits=httpx.Limits(max_connections=args.clients))

    def post(item: tuple[str, bytes]) -> int:
        msg_id, body = item
        ts = int(time.time())
        return http.post(url, content=body, headers={
            "webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign_webhook(secret, msg_id, ts, body),
            "content-type": "application/json"}).status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        accepted = sum(code == 202 for code in pool.map(post, bodies))
    accept_s = time.perf_counter() - started
    with resources.sessions() as s:
        while s.scalar(select(func.count()).select_from(WebhookEvent)
                       .where(WebhookEvent.processed_at.is_(None))):
            s.rollback()
            time.sleep(0.02)
        hook_s = time.perf_counter() - started
        rows = s.execute(select(WebhookEvent.received_at, WebhookEvent.processed_at)).all()
        refunds = s.scalar(select(func.count()).select_from(Transaction)
                           .where(Transaction.type == "REFUND"))
        balance = s.scalar(select(func.sum(User.balance)))
    http.close()
    assert accepted == n, f"only {accepted}/{n} accepted"
    assert refunds == n and balance == n, "each event must refund its order exactly once"
    hook_p = percentiles([(p - r).total_seconds() for r, p in rows if p is not None])

    noop_rate, hook_rate = n / noop_s, n / hook_s
    print(f"{n} events, {args.threads} worker threads, {args.clients} HTTP clients, "
          f"web as its own process; webhook accept phase alone: {n / accept_s:,.0f}/s")
    print_table(
        "Webhook events/s, HTTP accept -> processed (vs no-op dramatiq actor)",
        ["pipeline", "events/s", "p50 ms", "p95 ms", "p99 ms", "ratio to no-op"],
        [
            ["no-op dramatiq actor (send -> run)", noop_rate, *noop_p, 1.0],
            ["webhook (POST -> processed_at)", hook_rate, *hook_p, hook_rate / noop_rate],
        ],
    )


if __name__ == "__main__":
    main()
