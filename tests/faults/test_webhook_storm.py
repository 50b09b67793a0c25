"""1,000 webhooks through HTTP, 30 % of them duplicates, all shuffled and sent at once by
16 clients while a real worker processes them and customers read their orders."""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from db.models import Order, OrderStatus, Transaction, TransactionType, WebhookEvent
from services.accounts import tokens
from services.orders import status as order_status
from tests.faults.support import Figures, check_invariants
from tests.helpers import LiveServer, wait_until
from tests.order_flows import place_order
from tests.order_helpers import deliver_all, make_game, signed_headers, status_body
from web.app import create_app

pytestmark = pytest.mark.slow

ORDERS = 99
EVENTS_PER_ORDER = 7
ORPHANS = 7  # events for orders that never appear: kept, never applied
DUPLICATES = 300
TERMINAL = {OrderStatus.COMPLETED, OrderStatus.FAILED, OrderStatus.CANCELLED}


def test_1000_webhooks_with_duplicates_concurrent_and_out_of_order(
    resources: Any, worker_thread: Any, redis_client: Any, figures: Figures,
) -> None:
    rng = random.Random(1000)
    game = make_game(resources.sessions, price="20.00")
    made: list[tuple[uuid.UUID, uuid.UUID, bool]] = []
    for i in range(ORDERS):
        order_id, user_id = place_order(resources, [(game, 1)], funds="50.00",
                                        status=OrderStatus.PROCESSING)
        keyed = i % 2 == 0  # only orders with every key stored may complete
        if keyed:
            deliver_all(resources, order_id)
        made.append((order_id, user_id, keyed))
    # The fulfil_order jobs of these orders would buy real keys; this test is the inbox's.
    redis_client.delete("dramatiq:default", "dramatiq:default.msgs")

    unique: list[tuple[bytes, dict[str, str]]] = []
    sent_statuses: dict[uuid.UUID, list[OrderStatus]] = {}
    for order_id, _, keyed in made:
        choices = ["PENDING", "PROCESSING", "FAILED", "CANCELLED"] + (["COMPLETED"] if keyed
                                                                     else [])
        statuses = [rng.choice(choices) for _ in range(EVENTS_PER_ORDER)]
        sent_statuses[order_id] = [OrderStatus(s) for s in statuses]
        for status in statuses:
            body = status_body(status, order_id=order_id)
            unique.append((body, signed_headers(body)))
    for _ in range(ORPHANS):
        body = status_body("FAILED", order_id=uuid.uuid4())
        unique.append((body, signed_headers(body)))
    deliveries = unique + [rng.choice(unique) for _ in range(DUPLICATES)]
    rng.shuffle(deliveries)
    assert len(deliveries) == 1_000

    secret = resources.settings.jwt_secret.get_secret_value()
    codes: Counter[int] = Counter()
    lock = threading.Lock()
    with LiveServer(create_app(resources)) as server, \
            httpx.Client(base_url=server.url, timeout=30,
                         limits=httpx.Limits(max_connections=20)) as http:
        def deliver(item: tuple[bytes, dict[str, str]]) -> None:
            body, headers = item
            code = http.post("/webhooks/g2a", content=body, headers=headers).status_code
            with lock:
                codes[code] += 1

        def read(i: int) -> None:  # customers refresh their orders meanwhile
            order_id, user_id, _ = made[i % ORDERS]
            auth = {"Authorization": f"Bearer {tokens.issue(user_id, secret, 600)}"}
            assert http.get(f"/orders/{order_id}", headers=auth).status_code == 200
            assert http.get("/orders", headers=auth).status_code == 200

        with ThreadPoolExecutor(16) as pool:
            reads = [pool.submit(read, i) for i in range(0, 200, 2)]
            list(pool.map(deliver, deliveries))
            for r in reads:
                r.result()

        def settled() -> bool:
            with resources.sessions() as s:
                return not s.scalar(select(func.count()).select_from(WebhookEvent).where(
                    WebhookEvent.processed_at.is_(None),
                    func.coalesce(WebhookEvent.outcome, "") != "orphan"))

        wait_until(settled, 90, "every webhook processed", interval_s=0.2)
        for i in range(ORDERS):  # and once more after the storm, through the cache
            read(i)
    figures.requests += len(deliveries) + 400
    figures.faults += DUPLICATES  # redeliveries, shuffled with their originals
    figures.notes["http_codes"] = dict(codes)
    # Exactly one 202 per webhook-id, whichever copy arrived first.
    assert codes == {202: len(unique), 200: DUPLICATES}

    with resources.sessions() as s:
        final = {o.id: o.status for o in s.scalars(select(Order))}
        refunds = Counter(s.scalars(select(Transaction.order_id).where(
            Transaction.type == TransactionType.REFUND)))
        outcomes = Counter(s.scalars(select(WebhookEvent.outcome)))
    figures.notes["outcomes"] = dict(outcomes)
    assert outcomes["orphan"] == ORPHANS
    for order_id, _, _ in made:
        terminal = TERMINAL & set(sent_statuses[order_id])
        # Forward only: the first terminal event processed wins; none means still PROCESSING.
        assert final[order_id] in (terminal or {OrderStatus.PROCESSING})
        assert refunds[order_id] == (final[order_id] in order_status.REFUNDING)
    report = check_invariants(figures, resources.sessions, cache_redis=redis_client)
    assert report.ok, report.as_dict()
    assert report.cache_entries_compared >= ORDERS
