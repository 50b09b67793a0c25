"""Issue 16: never pay G2A for keys nobody gets (CONTRACT §5, fulfilment).

Real Postgres and Redis, the G2A simulator over HTTP. Each money scenario ends with the
invariant checker (`keysync check`'s code) fed the simulator's paid-order count, so a G2A
payment we cannot account for fails the test:
- pre-flight: G2A's stock or price moved since the sync → nothing bought, full refund;
- the residual race (G2A refuses a unit after others were bought, or a key is lost) →
  COMPLETED with the keys it has, one REFUND of the undelivered units;
- G2A answering an order creation above `max_price` or not in EUR → never paid.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from db.models import G2APurchaseStatus, OrderStatus, Transaction, TransactionType
from g2a_sim import DEFAULT_API_HASH, DEFAULT_API_SECRET, DEFAULT_EMAIL
from g2a_sim.app import expected_authorization
from g2a_sim.server import SimServer
from keysync.cli import main
from keysync.resources import Resources
from services.g2a import G2AClient
from services.ops import invariants
from services.orders import service as orders
from services.orders.fulfilment import Fulfiller, FulfilmentOutcome
from services.orders.schemas import OrderView
from services.webhooks.service import enqueue_orphans
from tests.order_flows import assert_invariants, fulfiller, order_row, order_units, place_order
from tests.order_helpers import balance, make_game, sim_game, sim_stats

FUNDS = Decimal("500.00")


def _sim_post(sim: SimServer, path: str, body: dict[str, Any]) -> None:
    httpx.post(sim.url + path, json=body, timeout=5.0).raise_for_status()


def _order_of(resources: Resources, sim: SimServer, units: int) -> tuple[uuid.UUID, uuid.UUID]:
    """An order of `units` of one game the simulator sells: (order id, user id)."""
    return place_order(resources, [(sim_game(resources.sessions, sim), units)])


def _view(resources: Resources, order_id: uuid.UUID) -> OrderView:
    kek = resources.settings.key_encryption_key.get_secret_value()
    with resources.sessions() as s:
        owner = order_row(resources, order_id).user_id
        return orders.get_order(s, resources.cache, owner, order_id, key_encryption_key=kek)


def _refunds(resources: Resources, order_id: uuid.UUID) -> list[Decimal]:
    with resources.sessions() as s:
        return list(s.scalars(select(Transaction.amount).where(
            Transaction.order_id == order_id, Transaction.type == TransactionType.REFUND)))


def _low_stock_product(sim: SimServer, *, at_least: int, below: int) -> tuple[str, int, Decimal]:
    """A simulator product G2A has few units of: (id, qty, price)."""
    for pid in sim.state.ids:
        p = sim.state.products[pid]
        if at_least <= p.qty < below:
            cents = p.retail_min_price if p.retail_min_price is not None else p.min_price
            return str(pid), p.qty, Decimal(cents) / 100
    raise AssertionError(f"no simulator product with {at_least} <= qty < {below}")


def _alerts(caplog: pytest.LogCaptureFixture, alert: str) -> list[dict[str, Any]]:
    """structlog events with `alert=...` (they reach stdlib logging as dicts)."""
    return [r.msg for r in caplog.records
            if isinstance(r.msg, dict) and r.msg.get("alert") == alert]


def _check_cli(sim: SimServer) -> dict[str, Any]:
    """`keysync check --json` against the test database, with G2A's paid count."""
    paid = sim_stats(sim)["orders_paid"]
    run = CliRunner().invoke(main, ["check", "--json", "--no-cache", "--g2a-paid", str(paid)])
    assert run.exit_code == 0, run.output
    report: dict[str, Any] = json.loads(run.stdout)
    assert report["ok"] and report["g2a_paid"]["total"] == paid
    return report


# --- pre-flight: nothing bought when G2A cannot sell the order as it was sold -------------
# (one look-up per item when it can: `test_fulfilment.test_happy_path_one_paid_order_per_key`)


def test_g2a_stock_dropped_since_the_sync_buys_nothing(
    resources: Resources, sim: SimServer
) -> None:
    """Issue 16 reproduction 1 at fulfilment: G2A lists fewer units than ordered (our row
    is from the last sync, which saw 10). Formerly 7 units were bought and all refunded."""
    # below 6: `sim_game` picks products with more than 5, so the two never collide
    pid, qty, cost = _low_stock_product(sim, at_least=1, below=6)
    plenty = sim_game(resources.sessions, sim)
    short = make_game(resources.sessions, price=cost * 2, product_id=pid, g2a_qty=10)
    order_id, user_id = place_order(resources, [(plenty, 1), (short, qty + 1)])
    f = fulfiller(resources, sim)
    result = f.run(order_id)
    assert result.outcome is FulfilmentOutcome.FAILED
    assert f"G2A lists {qty} of product {pid}" in result.reason
    assert order_units(resources, order_id) == []
    stats = sim_stats(sim)
    assert (stats["lookups"], stats["orders_created"], stats["orders_paid"]) == (2, 0, 0)
    assert order_row(resources, order_id).status is OrderStatus.FAILED
    assert _refunds(resources, order_id) == [order_row(resources, order_id).total]
    assert balance(resources.sessions, user_id) == FUNDS
    assert f.run(order_id).outcome is FulfilmentOutcome.SKIPPED  # a retry buys nothing
    assert sim_stats(sim)["orders_created"] == 0
    view = _view(resources, order_id)
    assert view.refunded == view.total and [i.delivered for i in view.items] == [0, 0]
    assert_invariants(resources, sim)
    _check_cli(sim)


def test_price_rise_before_fulfilment_buys_nothing(resources: Resources, sim: SimServer) -> None:
    """Issue 16 reproduction 2 without a race: B's G2A price rose above what the customer
    paid since the sync. Formerly A's 3 units were bought, then everything refunded."""
    a = sim_game(resources.sessions, sim)
    b = sim_game(resources.sessions, sim, skip=1, markup="0.90")  # G2A now asks more
    order_id, user_id = place_order(resources, [(a, 3), (b, 1)])
    result = fulfiller(resources, sim).run(order_id)
    assert result.outcome is FulfilmentOutcome.FAILED and "above the" in result.reason
    stats = sim_stats(sim)
    assert (stats["orders_created"], stats["orders_paid"]) == (0, 0)
    assert order_units(resources, order_id) == []
    assert balance(resources.sessions, user_id) == FUNDS
    assert len(_refunds(resources, order_id)) == 1
    assert_invariants(resources, sim)


def test_failed_lookup_retries_later_and_buys_nothing_meanwhile(
    resources: Resources, sim: SimServer
) -> None:
    order_id, _ = _order_of(resources, sim, 2)
    # every attempt of the client's look-up (3 in tests) answers 500
    _sim_post(sim, "/_sim/faults", {"status": 500, "only": "lookup", "count": 3})
    f = fulfiller(resources, sim)
    first = f.run(order_id)
    assert first.outcome is FulfilmentOutcome.PENDING and "pre-flight" in first.reason
    assert sim_stats(sim)["orders_created"] == 0
    assert order_row(resources, order_id).status is OrderStatus.PROCESSING
    assert f.run(order_id).outcome is FulfilmentOutcome.COMPLETED
    stats = sim_stats(sim)
    assert (stats["orders_paid"], stats["faults_injected"]) == (2, 3)
    assert_invariants(resources, sim)


# --- the residual race: G2A refuses after others were bought ------------------------------


def test_refusal_after_units_were_bought_completes_with_the_keys_it_has(
    resources: Resources, sim: SimServer
) -> None:
    """The pre-flight passed; B's order creation is then refused (a 400 injected on the 7th
    `/v1/order*` call: A's two units take create + pay + key each)."""
    a, b = sim_game(resources.sessions, sim), sim_game(resources.sessions, sim, skip=1)
    order_id, user_id = place_order(resources, [(a, 2), (b, 1)])
    price_a, price_b = (i.unit_price for i in _view(resources, order_id).items)
    _sim_post(sim, "/_sim/faults", {"status": 400, "paths": "/v1/order", "skip": 6, "count": 1})
    f = fulfiller(resources, sim)
    result = f.run(order_id)
    assert result.outcome is FulfilmentOutcome.COMPLETED
    assert result.reason.startswith("partially delivered")
    assert [u.status for u in order_units(resources, order_id)] == [
        G2APurchaseStatus.DELIVERED, G2APurchaseStatus.DELIVERED, G2APurchaseStatus.FAILED]
    assert order_row(resources, order_id).status is OrderStatus.COMPLETED
    assert _refunds(resources, order_id) == [price_b]  # one REFUND: the undelivered unit
    assert balance(resources.sessions, user_id) == FUNDS - 2 * price_a
    view = _view(resources, order_id)
    assert view.refunded == price_b
    assert [(i.quantity, i.delivered) for i in view.items] == [(2, 2), (1, 0)]
    assert len(view.keys or []) == 2  # the customer sees the keys they paid for
    # settled: a redelivered job buys nothing more
    assert f.run(order_id).outcome is FulfilmentOutcome.SKIPPED
    assert sim_stats(sim)["orders_paid"] == 2
    report = assert_invariants(resources, sim)
    assert report.g2a_paid["delivered"] == 2 and report.g2a_paid["total"] == 2
    cli = _check_cli(sim)
    assert cli["refunds"]["partial_deliveries"] == "1"
    assert Decimal(cli["refunds"]["undelivered_units_amount"]) == price_b


def test_stock_taken_by_another_buyer_mid_order(resources: Resources, sim: SimServer) -> None:
    """A real race at G2A: the pre-flight saw enough units; after our first unit is paid,
    another G2A customer buys the rest, so our next unit is refused (ORD01)."""
    pid, qty, cost = _low_stock_product(sim, at_least=3, below=60)
    game = make_game(resources.sessions, price=cost * 2, product_id=pid, g2a_qty=qty)
    order_id, user_id = place_order(resources, [(game, 3)])
    unit_price = order_row(resources, order_id).total / 3
    # Our first key is not handed out yet (every attempt 503): the run pauses with unit 0
    # paid, which is where the other buyer steps in, deterministically.
    _sim_post(sim, "/_sim/faults", {"status": 503, "paths": "/v1/order/key", "count": 3})
    f = fulfiller(resources, sim)
    assert f.run(order_id).outcome is FulfilmentOutcome.PENDING
    assert [u.status for u in order_units(resources, order_id)] == [G2APurchaseStatus.PAID]
    auth = {"Authorization": expected_authorization(sim.config)}
    with httpx.Client(base_url=sim.url, headers=auth, timeout=5.0) as other:
        for _ in range(qty - 1):  # our first unit is paid: qty - 1 left
            created = other.post("/v1/order", json={"product_id": pid, "currency": "EUR",
                                                    "max_price": float(cost)})
            assert created.status_code == 200, created.text
            other.put(f"/v1/order/pay/{created.json()['order_id']}").raise_for_status()
    assert sim.state.products[int(pid)].qty == 0

    assert f.run(order_id).outcome is FulfilmentOutcome.COMPLETED
    units = order_units(resources, order_id)
    assert [u.status for u in units] == [G2APurchaseStatus.DELIVERED, G2APurchaseStatus.FAILED]
    assert "ORD01" in (units[1].last_error or "")
    assert _refunds(resources, order_id) == [2 * unit_price]
    assert balance(resources.sessions, user_id) == FUNDS - unit_price
    view = _view(resources, order_id)
    assert (view.status, view.refunded, view.items[0].delivered) == (
        OrderStatus.COMPLETED, 2 * unit_price, 1)
    assert len(view.keys or []) == 1
    ours = sim_stats(sim)["orders_paid"] - (qty - 1)  # G2A's count includes the other buyer
    assert ours == 1
    with resources.sessions() as s:
        report = invariants.check(s, paid_g2a_orders=ours)
    assert report.ok, report.as_dict()


def test_key_lost_after_a_delivered_unit_completes_partially(
    resources: Resources, sim: SimServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The second unit is paid, then its key leaves G2A without us (ORD04): the first key
    stays delivered, the lost one is refunded and reported (key_lost), never retried."""
    order_id, user_id = _order_of(resources, sim, 2)
    unit_price = order_row(resources, order_id).total / 2
    # unit 0's key call passes; unit 1's fails every attempt, so it stays PAID
    _sim_post(sim, "/_sim/faults",
              {"status": 503, "paths": "/v1/order/key", "skip": 1, "count": 3})
    f = fulfiller(resources, sim)
    assert f.run(order_id).outcome is FulfilmentOutcome.PENDING
    paid = order_units(resources, order_id)[1]
    assert paid.status is G2APurchaseStatus.PAID
    auth = {"Authorization": expected_authorization(sim.config)}
    assert httpx.get(f"{sim.url}/v1/order/key/{paid.g2a_order_id}", headers=auth
                     ).status_code == 200
    assert f.run(order_id).outcome is FulfilmentOutcome.COMPLETED
    assert len(_alerts(caplog, "g2a_key_lost")) == 1
    assert [u.status for u in order_units(resources, order_id)] == [
        G2APurchaseStatus.DELIVERED, G2APurchaseStatus.KEY_LOST]
    assert _refunds(resources, order_id) == [unit_price]
    assert balance(resources.sessions, user_id) == FUNDS - unit_price
    report = assert_invariants(resources, sim)
    assert (report.g2a_paid["delivered"], report.g2a_paid["key_lost"]) == (1, 1)
    assert [u["state"] for u in report.paid_keys_not_fetched] == ["key_lost"]


# --- G2A's answer to an order creation is checked before paying ---------------------------


class _Rewriting(BaseHTTPRequestHandler):
    """Forwards to the simulator; rewrites the answer of chosen `POST /v1/order` calls."""

    sim_url: str
    rewrite: dict[int, dict[str, Any]]  # n-th order creation (1-based) -> fields to replace
    creates: int

    def _forward(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() in ("authorization", "content-type")}
        answer = httpx.request(self.command, self.server.sim_url + self.path,  # type: ignore[attr-defined]
                               content=body, headers=headers, timeout=10.0)
        content = answer.content
        if self.command == "POST" and self.path == "/v1/order" and answer.status_code == 200:
            server: Any = self.server
            server.creates += 1
            replace = server.rewrite.get(server.creates)
            if replace:
                content = json.dumps({**answer.json(), **replace}).encode()
        self.send_response(answer.status_code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = do_PUT = _forward

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _misbehaving_g2a(sim: SimServer, rewrite: dict[int, dict[str, Any]]) -> Iterator[str]:
    """A G2A that answers chosen order creations wrongly (a price above `max_price`, another
    currency), in front of the simulator, over real HTTP. The simulator never does that by
    itself: it refuses (ORD05) instead."""
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Rewriting)
    server.sim_url, server.rewrite, server.creates = sim.url, rewrite, 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _fulfiller_via(resources: Resources, url: str) -> Fulfiller:
    client = G2AClient(
        httpx.Client(base_url=url, timeout=10.0),
        email=DEFAULT_EMAIL, api_hash=DEFAULT_API_HASH, api_secret=DEFAULT_API_SECRET,
        max_attempts=3, base_wait_s=0.01, max_wait_s=0.05,
    )
    return Fulfiller(
        sessions=resources.sessions, g2a=client, cache=resources.cache, broker=resources.broker,
        key_encryption_key=resources.settings.key_encryption_key.get_secret_value(),
        g2a_order_stored=enqueue_orphans,
    )


def test_order_answered_above_max_price_is_never_paid(
    resources: Resources, sim: SimServer, caplog: pytest.LogCaptureFixture
) -> None:
    order_id, user_id = _order_of(resources, sim, 1)
    over = order_row(resources, order_id).total + Decimal("1.00")
    with _misbehaving_g2a(sim, {1: {"price": float(over)}}) as url:
        result = _fulfiller_via(resources, url).run(order_id)
    assert result.outcome is FulfilmentOutcome.FAILED and "above max_price" in result.reason
    alerts = _alerts(caplog, "g2a_bad_order_answer")
    assert len(alerts) == 1 and alerts[0]["price"] == str(over)
    assert alerts[0]["order_id"] == str(order_id)
    (unit,) = order_units(resources, order_id)
    assert unit.status is G2APurchaseStatus.FAILED and unit.g2a_order_id  # kept for support
    stats = sim_stats(sim)
    assert (stats["orders_created"], stats["orders_paid"]) == (1, 0)
    assert sim.state.orders[unit.g2a_order_id].transaction_id is None  # unpaid at G2A
    assert balance(resources.sessions, user_id) == FUNDS
    assert_invariants(resources, sim)


def test_order_answered_in_another_currency_is_a_refused_unit(
    resources: Resources, sim: SimServer
) -> None:
    order_id, user_id = _order_of(resources, sim, 2)
    unit_price = order_row(resources, order_id).total / 2
    with _misbehaving_g2a(sim, {2: {"currency": "USD"}}) as url:
        result = _fulfiller_via(resources, url).run(order_id)
    assert result.outcome is FulfilmentOutcome.COMPLETED and "currency USD" in result.reason
    assert [u.status for u in order_units(resources, order_id)] == [
        G2APurchaseStatus.DELIVERED, G2APurchaseStatus.FAILED]
    assert sim_stats(sim)["orders_paid"] == 1
    assert _refunds(resources, order_id) == [unit_price]
    assert balance(resources.sessions, user_id) == FUNDS - unit_price
    assert_invariants(resources, sim)
