"""Orders that give up, once (issue 15): a G2A outage on `POST /v1/order` keeps one
fulfilment chain per order, G2A sees one order-create attempt per order and backoff step,
and an order whose fulfilment cannot start for FULFILMENT_GIVE_UP_S fails with one refund
and `alert=order_gave_up`; units already paid are still fetched.

Real worker (`g2a_worker`), real Redis broker, the simulator over HTTP; the scheduled
poller's function is called directly, as its actor would.
"""

from __future__ import annotations

import math
import time
import uuid
from decimal import Decimal
from typing import Any

import httpx
import redis
import structlog
from sqlalchemy import func, select

from db.models import G2APurchase, G2APurchaseStatus, Order, OrderStatus
from g2a_sim.server import SimServer
from keysync.resources import Resources
from services.orders.chains import FulfilmentChains, message_token, resume_delay_ms
from services.orders.fulfilment import FulfilmentOutcome, FulfilmentResult
from services.orders.give_up import GiveUp
from services.orders.polling import PollResult, poll_order_status
from tests.faults.support import Figures, check_invariants
from tests.helpers import wait_until
from tests.order_flows import (
    assert_invariants,
    fulfiller,
    order_row,
    order_units,
    place_order,
    refunds,
)
from tests.order_helpers import balance, sim_client, sim_game, sim_stats
from worker.inspect import BrokerInspector, State

FUNDS = Decimal("500.00")
ORDERS = 4


def _creates(sim: SimServer) -> int:
    """`POST /v1/order` requests G2A received (each one an order-create attempt)."""
    return int(sim_stats(sim)["requests_by_path"].get("/v1/order", 0))


def _fulfil_messages(client: redis.Redis, *states: State) -> dict[str, set[str]]:
    """Per order id, the fulfil_order messages waiting in the broker in `states` (distinct
    message ids: a delayed message reaching its ETA is briefly listed in both)."""
    per_order: dict[str, set[str]] = {}
    for state in states:
        for message in BrokerInspector(client).messages(state, limit=1000).items:
            if message.actor == "fulfil_order":
                per_order.setdefault(message.args[0], set()).add(message.message_id)
    return per_order


def _poll(resources: Resources, sim: SimServer, *, give_up: GiveUp | None = None
          ) -> PollResult:
    return poll_order_status(resources.sessions, sim_client(sim), resources.broker,
                             chains=FulfilmentChains(resources.redis), give_up=give_up,
                             min_age_s=0)


def _age_s(resources: Resources, order_id: uuid.UUID) -> float:
    """The order's age by Postgres's clock, the one the give-up decision reads."""
    with resources.sessions() as session:
        return float(session.scalar(
            select(func.extract("epoch", func.now() - Order.created_at))
            .where(Order.id == order_id)) or 0)


def _outage(sim: SimServer, **fault: Any) -> None:
    """G2A's order API answers 503 (every path under /v1/order)."""
    httpx.post(sim.url + "/_sim/faults",
               json={"status": 503, "paths": "/v1/order", **fault}).raise_for_status()


def test_g2a_outage_keeps_one_chain_per_order_then_gives_up_with_one_refund(
    resources: Resources, sim: SimServer, g2a_worker: Any, figures: Figures
) -> None:
    _outage(sim)
    placed = [place_order(resources, [(sim_game(resources.sessions, sim, skip=i), 1)])
              for i in range(ORDERS)]
    started = time.monotonic()
    ids = sorted(order_id for order_id, _ in placed)
    chains = FulfilmentChains(resources.redis)
    wait_until(lambda: _creates(sim) >= ORDERS, what="every order tried G2A once")

    # Several poller runs during the outage: each finds every chain alive and starts none.
    most_waiting = 0
    for _ in range(3):
        before = _creates(sim)
        result = _poll(resources, sim)
        assert result.resumed == [] and sorted(result.chains_alive) == ids
        assert result.details_calls == 0  # left to the chain: not even a G2A look-up
        waiting = _fulfil_messages(resources.redis, State.DELAYED, State.QUEUED)
        assert all(len(messages) <= 1 for messages in waiting.values()), waiting
        most_waiting = max([most_waiting, *(len(m) for m in waiting.values())])
        wait_until(lambda b=before: _creates(sim) >= b + ORDERS, timeout_s=30,
                   what="every chain's next backoff step")
    assert sorted(chains.alive(ids)) == ids

    # Bounded: one attempt per order and backoff step (1, 2, 4 … s apart), whatever the
    # poller does; the chains that were multiplying made 53 calls for 4 orders before.
    elapsed = time.monotonic() - started
    steps = 2 + math.floor(math.log2(1 + elapsed))
    assert _creates(sim) <= ORDERS * steps, (_creates(sim), elapsed)
    figures.notes.update(orders=ORDERS, poller_runs=3, outage_s=round(elapsed, 1),
                         order_create_calls=_creates(sim), bound=ORDERS * steps,
                         most_fulfil_messages_waiting_per_order=most_waiting)
    assert sim_stats(sim)["orders_created"] == 0 and sim_stats(sim)["orders_paid"] == 0

    # FULFILMENT_GIVE_UP_S, shortened: every order fails with one refund and an alert.
    with structlog.testing.capture_logs() as logs:
        result = _poll(resources, sim, give_up=GiveUp(0.5, resources.cache))
    assert sorted(result.gave_up) == ids and result.resumed == []
    alerts = [e for e in logs if e.get("alert") == "order_gave_up"]
    assert sorted(uuid.UUID(e["order_id"]) for e in alerts) == ids
    for alert in alerts:
        assert alert["log_level"] == "error"
        assert alert["age_s"] >= 1 and alert["give_up_after_s"] == 0.5
        assert alert["last_error"].startswith("create_order"), alert
        assert (alert["units"], alert["paid_units"], alert["refunded"]) == (1, 0, True)
    for order_id, user_id in placed:
        assert order_row(resources, order_id).status is OrderStatus.FAILED
        assert refunds(resources, order_id) == 1
        assert balance(resources.sessions, user_id) == FUNDS

    # Each chain sees the refund at its next step and ends: no message, no lease left,
    # and no order-create attempt after the give-up.
    creates = _creates(sim)
    wait_until(lambda: not chains.alive(ids), timeout_s=40, what="every chain ended")
    wait_until(lambda: not _fulfil_messages(resources.redis, State.DELAYED, State.QUEUED),
               what="no fulfil_order message left")
    assert _creates(sim) == creates
    again = _poll(resources, sim, give_up=GiveUp(0.5, resources.cache))
    assert again.gave_up == [] and again.resumed == [] and again.chains_alive == []
    for order_id, _ in placed:
        assert refunds(resources, order_id) == 1  # once, however often the poller runs
    figures.faults = int(sim_stats(sim)["faults_injected"])
    httpx.delete(sim.url + "/_sim/faults")
    report = check_invariants(figures, resources.sessions, sim=sim)
    assert report.ok, report.as_dict()


def test_give_up_still_fetches_the_key_of_a_paid_unit(
    resources: Resources, sim: SimServer, g2a_worker: Any
) -> None:
    """Two units: the first is created and paid, then G2A's order API goes down (its key,
    the second unit's create). Giving up refunds the whole order; the paid unit's key is
    still fetched by the live chain once G2A is back, and kept for support."""
    _outage(sim, skip=2)  # POST /v1/order and PUT /pay of unit 0 go through
    order_id, user_id = place_order(resources, [(sim_game(resources.sessions, sim), 2)])
    chains = FulfilmentChains(resources.redis)
    wait_until(lambda: sim_stats(sim)["faults_injected"] >= 2, what="the key call failing")
    (unit,) = order_units(resources, order_id)
    assert unit.status is G2APurchaseStatus.PAID
    # The key failures can come within the give-up time of placing the order.
    wait_until(lambda: _age_s(resources, order_id) > 0.5, what="the order older than 0.5 s")

    with structlog.testing.capture_logs() as logs:
        result = _poll(resources, sim, give_up=GiveUp(0.5, resources.cache))
    assert result.gave_up == [order_id]
    assert result.chains_alive == [order_id]  # the live chain fetches the key: no second one
    (alert,) = [e for e in logs if e.get("alert") == "order_gave_up"]
    assert (alert["units"], alert["paid_units"], alert["awaiting_key"]) == (2, 1, 1)
    assert "get_key" in alert["last_error"]
    assert order_row(resources, order_id).status is OrderStatus.FAILED
    assert balance(resources.sessions, user_id) == FUNDS and refunds(resources, order_id) == 1

    httpx.delete(sim.url + "/_sim/faults")
    wait_until(lambda: order_units(resources, order_id)[0].status
               is G2APurchaseStatus.DELIVERED, timeout_s=40, what="the paid key fetched")
    wait_until(lambda: not chains.alive([order_id]), what="the chain ended")
    with resources.sessions() as s:
        assert len(s.scalars(select(G2APurchase)).all()) == 1  # unit 1 never ordered
    assert order_row(resources, order_id).status is OrderStatus.FAILED
    assert balance(resources.sessions, user_id) == FUNDS and refunds(resources, order_id) == 1
    assert _creates(sim) == 1 and sim_stats(sim)["orders_paid"] == 1
    report = assert_invariants(resources, sim, webhook_grace=False)
    assert report.g2a_paid["kept_for_support"] == 1 and report.paid_keys_not_fetched == []


def test_an_order_waiting_only_for_keys_does_not_give_up(
    resources: Resources, sim: SimServer
) -> None:
    """Every unit paid, key not ready: fulfilment has started and G2A has the money, so the
    order waits (stuck orders show it to operators) instead of being refunded."""
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 30}).raise_for_status()
    order_id, _ = place_order(resources, [(sim_game(resources.sessions, sim), 1)])
    assert fulfiller(resources, sim).run(order_id).outcome is FulfilmentOutcome.PENDING
    result = _poll(resources, sim, give_up=GiveUp(0.01, resources.cache))
    assert result.gave_up == []
    assert order_row(resources, order_id).status is OrderStatus.PROCESSING


def test_a_dead_chain_blocks_only_until_its_lease_expires(
    resources: Resources, sim: SimServer
) -> None:
    """A chain whose worker died leaves its lease behind: the poller waits for it to expire,
    then starts exactly one new chain; the dead chain's late message drops itself."""
    order_id, _ = place_order(resources, [(sim_game(resources.sessions, sim), 1)])
    chains = FulfilmentChains(resources.redis)
    queued_by_purchase = len(_fulfil_messages(resources.redis, State.QUEUED)[str(order_id)])
    assert chains.claim(order_id, "dead-chain", 2000)  # a killed worker's run leaves it
    assert _poll(resources, sim).chains_alive == [order_id]
    wait_until(lambda: not chains.alive([order_id]), what="the dead chain's lease expired")

    first = _poll(resources, sim)
    assert first.resumed == [order_id]
    assert _poll(resources, sim).chains_alive == [order_id]  # never a second chain
    queued = _fulfil_messages(resources.redis, State.QUEUED)[str(order_id)]
    assert len(queued) == queued_by_purchase + 1

    ran: list[uuid.UUID] = []

    def fulfil(oid: uuid.UUID) -> FulfilmentResult:
        ran.append(oid)
        return FulfilmentResult(oid, FulfilmentOutcome.PENDING, "test")

    # The dead chain's message, or one from outside any chain, finds the new chain's lease.
    assert chains.run(order_id, "dead-chain", 3, fulfil) is None
    assert chains.run(order_id, message_token(str(uuid.uuid4())), 0, fulfil) is None
    assert ran == []


def test_a_chain_hands_its_lease_on_and_releases_it_when_done(redis_client: redis.Redis
                                                              ) -> None:
    chains = FulfilmentChains(redis_client)
    order_id = uuid.uuid4()
    outcomes = iter([FulfilmentOutcome.PENDING, FulfilmentOutcome.PENDING,
                     FulfilmentOutcome.COMPLETED])

    def fulfil(oid: uuid.UUID) -> FulfilmentResult:
        return FulfilmentResult(oid, next(outcomes), "create_order: HTTP503")

    token = message_token(str(uuid.uuid4()))  # started by a message from outside any chain
    first = chains.run(order_id, token, 0, fulfil)
    assert first is not None and (first.token, first.resumes, first.delay_ms) == (token, 1, 1000)
    assert chains.holder(order_id) == token
    ttl = redis_client.pttl(f"fulfil:chain:{order_id}")
    assert 1000 < int(ttl) <= 1000 + 120_000  # delay + grace: a dead chain expires
    assert chains.last_error(order_id) == "create_order: HTTP503"
    second = chains.run(order_id, first.token, first.resumes, fulfil)
    assert second is not None and second.token == first.token and second.delay_ms == 2000
    assert chains.run(order_id, second.token, second.resumes, fulfil) is None
    assert chains.alive([order_id]) == set() and chains.last_error(order_id) is None
    assert [resume_delay_ms(n) for n in (0, 1, 5, 6, 7, 100)] == [
        1000, 2000, 32_000, 60_000, 60_000, 60_000]
