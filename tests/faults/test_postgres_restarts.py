"""Postgres stopped and started again while orders are being created and fulfilled.

A Postgres of our own (`own_pg`) is restarted for real (fast shutdown: every connection is
cut, open transactions roll back). Requests during the outage get 503 + Retry-After; work
in flight fails and is redone afterwards from the stored state; money and G2A payments
stay exactly-once.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from db.models import Order, OrderStatus, User
from g2a_sim.server import SimServer
from keysync.embedded import EmbeddedPostgres
from keysync.resources import Resources
from services.accounts import tokens
from services.orders import service as orders
from services.orders.fulfilment import Fulfiller, FulfilmentOutcome
from services.webhooks.service import enqueue_orphans
from tests.faults.support import Figures, check_invariants, sim_faults, sim_stats
from tests.helpers import LiveServer, wait_until
from tests.order_helpers import make_game, make_user, sim_client, sim_game
from web.app import create_app

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_resources(settings: Any, broker: Any, own_pg: EmbeddedPostgres) -> Iterator[Resources]:
    res = Resources.build(settings.model_copy(update={"database_url": own_pg.url}), broker)
    yield res
    res.close()


def test_postgres_restarted_during_order_creation(
    pg_resources: Resources, own_pg: EmbeddedPostgres, redis_client: Any, figures: Figures,
) -> None:
    res = pg_resources
    game = make_game(res.sessions, price="10.00")
    users = [make_user(res.sessions, "100.00") for _ in range(16)]
    secret = res.settings.jwt_secret.get_secret_value()
    work = [(user_id, n) for n in range(6) for user_id in users]  # 96 orders of 10.00
    codes: Counter[int] = Counter()
    created: list[tuple[uuid.UUID, uuid.UUID]] = []
    lock = threading.Lock()
    restarted = threading.Event()

    with LiveServer(create_app(res)) as server, httpx.Client(base_url=server.url,
                                                              timeout=30) as http:
        def buy(item: tuple[uuid.UUID, int]) -> None:
            user_id, _ = item
            response = http.post(
                "/orders", json={"items": [{"game_id": str(game), "quantity": 1}]},
                headers={"Authorization": f"Bearer {tokens.issue(user_id, secret, 600)}"})
            body = response.json()
            assert "Traceback" not in response.text
            with lock:
                codes[response.status_code] += 1
                if response.status_code == 201:
                    created.append((user_id, uuid.UUID(body["id"])))
            if response.status_code == 503:
                assert response.headers["Retry-After"] and body["error"]["code"]

        def outage() -> None:
            wait_until(lambda: sum(codes.values()) >= 30, 60, "orders before the outage")
            own_pg.stop()
            figures.faults += 1
            wait_until(lambda: codes[503] >= 10, 60, "requests during the outage")
            own_pg.start()
            restarted.set()

        with ThreadPoolExecutor(9) as pool:
            restarter = pool.submit(outage)
            list(pool.map(buy, work[:60]))
            restarter.result()
            list(pool.map(buy, work[60:]))
    figures.requests += len(work)
    figures.notes["status_codes"] = dict(codes)
    assert restarted.is_set()
    assert set(codes) <= {201, 503} and codes[201] >= 40 and codes[503] >= 10

    with res.sessions() as s:
        stored = {o.id: o for o in s.scalars(select(Order))}
        balances = {u.id: u.balance for u in s.scalars(select(User))}
    # Every 201 is a stored, paid order; a 503 may or may not have committed (the commit
    # can land before the connection is cut), never half of one: the ledger says which.
    assert {oid for _, oid in created} <= set(stored)
    assert len(stored) - len(created) <= codes[503]
    per_user = Counter(o.user_id for o in stored.values())
    assert all(balances[u] == Decimal("100.00") - 10 * per_user[u] for u in users)
    report = check_invariants(figures, res.sessions, cache_redis=redis_client)
    assert report.ok, report.as_dict()


def test_postgres_restarted_during_fulfilment(
    pg_resources: Resources, own_pg: EmbeddedPostgres, sim: SimServer, redis_client: Any,
    figures: Figures,
) -> None:
    res = pg_resources
    games = [sim_game(res.sessions, sim, skip=i) for i in range(3)]
    order_ids = []
    for i in range(6):
        user_id = make_user(res.sessions, "500.00")
        view = orders.create_order(res.sessions, res.broker, res.cache, user_id,
                                   [orders.LineRequest(games[i % 3], 2)])
        order_ids.append(view.id)
    # Payments are slow, so the restart lands while transactions hold order locks across
    # G2A calls (G2A completes those payments; our commits of them are lost).
    sim_faults(sim, rate=1.0, latency_ms=700, paths="/v1/order/pay", count=6)

    def fulfiller() -> Fulfiller:
        return Fulfiller(sessions=res.sessions, g2a=sim_client(sim), cache=res.cache,
                         broker=res.broker,
                         key_encryption_key=res.settings.key_encryption_key.get_secret_value(),
                         g2a_order_stored=enqueue_orphans)

    errors: list[str] = []

    def run(order_id: uuid.UUID) -> None:
        try:
            fulfiller().run(order_id)
        except Exception as exc:  # what a worker's retry middleware would catch
            errors.append(type(exc).__name__)

    threads = [threading.Thread(target=run, args=(oid,)) for oid in order_ids]
    for t in threads:
        t.start()
    pay_path = "/v1/order/pay/{order_id}"
    wait_until(lambda: sim_stats(sim)["requests_by_path"].get(pay_path, 0) >= 4, 20,
               "payments in flight")
    own_pg.stop()
    figures.faults += 1
    for t in threads:
        t.join(60)
    own_pg.start()
    assert errors, "the outage must have cut some fulfilment short"
    figures.notes["runs_cut_short"] = len(errors)

    for order_id in order_ids:  # the retries: resume from the stored state
        f = fulfiller()
        outcome = f.run(order_id).outcome
        for _ in range(10):
            if outcome is not FulfilmentOutcome.PENDING:
                break
            outcome = f.run(order_id).outcome
        assert outcome is FulfilmentOutcome.COMPLETED
    with res.sessions() as s:
        assert {o.status for o in s.scalars(select(Order))} == {OrderStatus.COMPLETED}
    stats = sim_stats(sim)
    assert (stats["orders_paid"], stats["payments"], stats["keys_issued"]) == (12, 12, 12)
    figures.faults += stats["faults_injected"]
    figures.requests += stats["requests"]
    report = check_invariants(figures, res.sessions, sim=sim, cache_redis=redis_client)
    assert report.ok, report.as_dict()
