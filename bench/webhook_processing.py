"""Webhook processing alone: pre-stored events drained by a worker in its own process, beside
a no-op actor drained by the same worker settings on the same broker, in one run.

For each pipeline the queue is filled first (N `bench_noop` messages, or N stored
`webhook_events` rows each with its `process_webhook_event` message, as intake leaves them),
then a fresh worker process tree (`dramatiq jobs bench._noop_jobs`: every actor of `jobs`
plus the no-op) is started. The clock runs from the first message acknowledged to the last,
so interpreter start-up is outside it; CPU is the worker tree's user+system time over the
same window, per message. Every event is a FAILED status for a PENDING order (the heaviest
path: lock, forward-only transition, one refund and the balance credit), and the run checks
that every order was refunded exactly once.

Usage: python bench/webhook_processing.py [--events 4000] [--processes N] [--threads 4]
(defaults: `keysync worker`'s, one process per core and 4 threads)
Starts throwaway Postgres/Redis via keysync.embedded unless DATABASE_URL/REDIS_URL are set.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import cpu_seconds, postgres_server, print_table, redis_server
from bench._worker_proc import worker_process

TOTAL = Decimal("10.00")


def drain(redis: Any, queue: str, n: int, processes: int, threads: int) -> tuple[float, float]:
    """Start a worker on the pre-filled `queue`; (messages/s, worker CPU ms per message)."""
    pending = f"dramatiq:{queue}.msgs"  # a message stays in this hash until it is acked
    with worker_process("bench._noop_jobs", processes=processes, threads=threads) as pid:
        deadline = time.monotonic() + 60
        while (left := int(redis.hlen(pending))) == n:
            if time.monotonic() > deadline:
                raise SystemExit("the worker did not start")
            time.sleep(0.002)
        started, cpu0, first_left = time.perf_counter(), cpu_seconds(pid), left
        deadline = time.monotonic() + 600
        while (left := int(redis.hlen(pending))) > 0:
            if time.monotonic() > deadline:
                raise SystemExit(f"{left} messages never finished")
            time.sleep(0.005)
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu0
    return first_left / elapsed, cpu * 1000 / first_left


def store_events(resources: Any, broker: Any, n: int) -> Callable[[], None]:
    """N PENDING orders and one stored FAILED event each, queued as intake queues them;
    returns the check that each order was refunded exactly once."""
    from sqlalchemy import func, insert, select

    from db.models import Order, OrderStatus, Transaction, User, WebhookEvent
    from services.job_outbox import send
    from worker.enqueue import Actor

    users = [uuid.uuid4() for _ in range(n)]
    orders = [uuid.uuid4() for _ in range(n)]
    events = [f"msg_{uuid.uuid4().hex}" for _ in range(n)]
    with resources.sessions() as session, session.begin():
        session.execute(insert(User), [
            {"id": u, "email": f"{u}@bench.example", "password_hash": "x"} for u in users])
        session.execute(insert(Order), [
            {"id": o, "user_id": u, "status": OrderStatus.PENDING, "total": TOTAL}
            for o, u in zip(orders, users, strict=True)])
        session.execute(insert(WebhookEvent), [
            {"event_id": e, "type": "order.status_changed", "payload": {
                "type": "order.status_changed",
                "data": {"order_id": str(o), "status": "FAILED",
                         "occurred_at": "2026-01-01T00:00:00+00:00"}}}
            for e, o in zip(events, orders, strict=True)])
    for event_id in events:
        send(broker, Actor.PROCESS_WEBHOOK_EVENT.value, event_id)

    def check() -> None:
        with resources.sessions() as session:
            unprocessed = session.scalar(select(func.count()).select_from(WebhookEvent)
                                         .where(WebhookEvent.processed_at.is_(None)))
            refunds = session.scalar(select(func.count()).select_from(Transaction)
                                     .where(Transaction.type == "REFUND"))
            balance = session.scalar(select(func.sum(User.balance)))
        assert unprocessed == 0, f"{unprocessed} events unprocessed"
        assert refunds == n and balance == TOTAL * n, "each order refunded exactly once"

    return check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=4, help="as keysync worker")
    args = parser.parse_args()
    with postgres_server() as database_url, redis_server() as redis_url:
        os.environ.update(DATABASE_URL=database_url, REDIS_URL=redis_url, BROKER_URL=redis_url,
                          LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"))
        from bench._noop_jobs import NOOP_QUEUE, bench_noop
        from jobs import broker
        from keysync.resources import Resources
        from keysync.settings import get_settings

        resources = Resources.build(get_settings(), broker)
        try:
            for _ in range(args.events):
                bench_noop.send()
            noop = drain(resources.redis, NOOP_QUEUE, args.events, args.processes, args.threads)
            check = store_events(resources, broker, args.events)
            hooks = drain(resources.redis, "default", args.events, args.processes, args.threads)
            check()
        finally:
            resources.close()
    print_table(
        f"{args.events} messages each, pre-stored, drained by a separate worker "
        f"({args.processes} process(es) x {args.threads} threads)",
        ["pipeline", "messages/s", "worker CPU ms/msg", "ratio to no-op"],
        [["no-op dramatiq actor", noop[0], noop[1], 1.0],
         ["process_webhook_event (FAILED -> refund)", hooks[0], hooks[1], hooks[0] / noop[0]]],
    )


if __name__ == "__main__":
    main()
