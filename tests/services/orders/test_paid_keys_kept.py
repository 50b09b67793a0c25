"""Paid keys are never abandoned (issue 12 item 5).

A FAILED/CANCELLED that lands after G2A was paid for a unit, but before its key was
downloaded, refunds the customer once and leaves the order final; the key is still fetched
and kept encrypted for support, never shown to the customer. A key G2A will not hand out any
more is an `alert=g2a_paid_after_refund`, and `keysync check` lists it.

Real Postgres, Redis and the G2A simulator over HTTP; the status change goes through the
real webhook processing (`order_status.apply`) while fulfilment really holds the order lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
import structlog
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import text

from db.models import G2APurchase, G2APurchaseStatus, OrderStatus
from g2a_sim.app import expected_authorization
from g2a_sim.server import SimServer
from keysync.resources import Resources
from services.ops import invariants
from services.orders.fulfilment import FulfilmentOutcome
from services.orders.polling import poll_order_status
from services.webhooks import service as webhooks
from tests.faults.support import KEYSYNC
from tests.helpers import wait_until
from tests.order_flows import (
    assert_invariants,
    bearer,
    fulfiller,
    order_row,
    order_units,
    place_order,
    refunds,
)
from tests.order_helpers import (
    balance,
    signed_headers,
    sim_client,
    sim_game,
    sim_stats,
    status_body,
)
from web.app import create_app

FUNDS = Decimal("500.00")


def _order(resources: Resources, sim: SimServer) -> tuple[uuid.UUID, uuid.UUID]:
    return place_order(resources, [(sim_game(resources.sessions, sim), 1)], funds=str(FUNDS))


def _unit(resources: Resources, order_id: uuid.UUID) -> G2APurchase:
    (unit,) = order_units(resources, order_id)
    return unit


def _order_status(resources: Resources, order_id: uuid.UUID) -> OrderStatus:
    return order_row(resources, order_id).status


def _status_webhook(resources: Resources, app: TestClient, order_id: uuid.UUID, status: str) -> str:
    """A signed status webhook accepted over HTTP; returns its id (processing is the
    caller's, so it can run it in another thread)."""
    body = status_body(status, order_id=order_id)
    headers = signed_headers(body)
    assert app.post("/webhooks/g2a", content=body, headers=headers).status_code == 202
    return headers["webhook-id"]


def _process(resources: Resources, event_id: str) -> webhooks.ProcessResult:
    return webhooks.process_event(resources.sessions, resources.broker, resources.cache,
                                  event_id)


def _someone_waits_on_a_lock(resources: Resources) -> bool:
    with resources.sessions() as s:
        return bool(s.scalar(text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'")))


def _order_json(resources: Resources, app: TestClient, user_id: uuid.UUID, order_id: uuid.UUID
                ) -> dict[str, Any]:
    answer = app.get(f"/orders/{order_id}", headers=bearer(resources, user_id))
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _keysync_check(*args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([KEYSYNC, "check", "--json", *args], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.mark.parametrize("refund_status", ["CANCELLED", "FAILED"])
def test_refund_landing_between_pay_and_key_keeps_the_paid_key(
    resources: Resources, sim: SimServer, refund_status: str,
) -> None:
    order_id, user_id = _order(resources, sim)
    app = TestClient(create_app(resources))
    event_id = _status_webhook(resources, app, order_id, refund_status)
    # The pay call is slow: while it is in flight fulfilment holds the order lock, so the
    # status webhook queues behind it and lands right after the PAID commit, before the
    # key step takes the lock again.
    httpx.post(sim.url + "/_sim/faults",
               json={"rate": 1.0, "latency_ms": 1500, "paths": "/v1/order/pay", "count": 1})
    with ThreadPoolExecutor(2) as pool:
        fulfilment = pool.submit(fulfiller(resources, sim).run, order_id)
        wait_until(lambda: sim_stats(sim)["faults_injected"] == 1, what="pay in flight")
        status_change = pool.submit(_process, resources, event_id)
        wait_until(lambda: _someone_waits_on_a_lock(resources) or status_change.done(),
                   what="the status change waiting for the order lock")
        assert not status_change.done()  # it really waits behind the pay step
        result = fulfilment.result(timeout=30)
        processed = status_change.result(timeout=30)

    assert processed.transition is not None and processed.transition.refunded
    assert processed.transition.previous is OrderStatus.PROCESSING  # it landed mid-fulfilment
    assert result.outcome is FulfilmentOutcome.FAILED and result.kept_keys == 1, result
    # the order stays as the webhook left it, refunded exactly once
    assert _order_status(resources, order_id) is OrderStatus(refund_status)
    assert balance(resources.sessions, user_id) == FUNDS and refunds(resources, order_id) == 1
    # the paid key is fetched and stored encrypted, not left at G2A
    unit = _unit(resources, order_id)
    assert unit.status is G2APurchaseStatus.DELIVERED and unit.key_encrypted is not None
    key = sim.state.orders[unit.g2a_order_id].key  # type: ignore[index]
    assert key is not None and key.encode() not in unit.key_encrypted
    kek = resources.settings.key_encryption_key.get_secret_value()
    assert Fernet(kek.encode()).decrypt(unit.key_encrypted).decode() == key
    # ... and never shown to the customer of the refunded order
    view = _order_json(resources, app, user_id, order_id)
    assert view["status"] == refund_status and not view.get("keys")
    assert key not in json.dumps(view)
    # a redelivered job changes nothing and asks G2A for nothing
    requests = sim_stats(sim)["requests"]
    assert fulfiller(resources, sim).run(order_id).outcome is FulfilmentOutcome.SKIPPED
    assert sim_stats(sim)["requests"] == requests
    stats = sim_stats(sim)
    assert (stats["orders_paid"], stats["payments"], stats["keys_issued"]) == (1, 1, 1)
    report = assert_invariants(resources, sim, webhook_grace=False)
    assert report.g2a_paid == {"delivered": 0, "kept_for_support": 1, "awaiting_key": 0,
                               "key_lost": 0, "total": 1}
    assert report.paid_keys_not_fetched == []


def test_poller_fetches_the_key_of_a_refunded_order_once_g2a_has_it(
    resources: Resources, sim: SimServer
) -> None:
    """The key is not ready when the cancel lands; the run that sees the refund cannot fetch
    it either (ORD03), so the unit waits PAID and the poller brings fulfilment back."""
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 30})
    order_id, user_id = _order(resources, sim)
    f = fulfiller(resources, sim)
    assert f.run(order_id).outcome is FulfilmentOutcome.PENDING
    app = TestClient(create_app(resources))
    assert _process(resources, _status_webhook(resources, app, order_id, "CANCELLED")
                    ).outcome == "processed"
    pending = f.run(order_id)
    assert pending.outcome is FulfilmentOutcome.PENDING and "keeping paid keys" in pending.reason
    assert _unit(resources, order_id).status is G2APurchaseStatus.PAID

    # until it is fetched the unit is listed; with no grace it is a violation
    with resources.sessions() as s:
        lenient = invariants.check(s)
    assert lenient.ok and [u["state"] for u in lenient.paid_keys_not_fetched] == ["awaiting_key"]
    with resources.sessions() as s:
        strict = invariants.check(s, webhook_grace=False)
    assert [v["order_id"] for v in strict.violations["paid_keys_fetched_or_alerted"]] == [
        str(order_id)]

    def poll() -> list[uuid.UUID]:
        return poll_order_status(resources.sessions, sim_client(sim), resources.broker,
                                 min_age_s=0).resumed

    assert poll() == []  # G2A: paid, key pending
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 0})
    assert poll() == [order_id]  # key ready: fulfilment is queued (job outbox)
    assert f.run(order_id).kept_keys == 1
    assert poll() == []
    assert _order_status(resources, order_id) is OrderStatus.CANCELLED
    assert balance(resources.sessions, user_id) == FUNDS and refunds(resources, order_id) == 1
    assert "keys" not in _order_json(resources, app, user_id, order_id)
    assert sim_stats(sim)["keys_issued"] == 1
    assert_invariants(resources, sim, webhook_grace=False)


def test_paid_key_that_cannot_be_fetched_alerts_and_check_lists_it(
    resources: Resources, sim: SimServer
) -> None:
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 30})
    order_id, user_id = _order(resources, sim)
    f = fulfiller(resources, sim)
    assert f.run(order_id).outcome is FulfilmentOutcome.PENDING
    app = TestClient(create_app(resources))
    _process(resources, _status_webhook(resources, app, order_id, "CANCELLED"))
    # the key leaves G2A without us (e.g. downloaded from the G2A dashboard): ORD04 next
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 0})
    unit = _unit(resources, order_id)
    auth = {"Authorization": expected_authorization(sim.config)}
    assert httpx.get(f"{sim.url}/v1/order/key/{unit.g2a_order_id}",
                     headers=auth).status_code == 200

    with structlog.testing.capture_logs() as logs:
        result = f.run(order_id)
    assert result.outcome is FulfilmentOutcome.SKIPPED and result.lost_keys == 1
    alerts = [e for e in logs if e.get("alert") == "g2a_paid_after_refund"]
    assert len(alerts) == 1 and alerts[0]["log_level"] == "error"
    assert alerts[0]["order_id"] == str(order_id)
    assert alerts[0]["order_item_id"] == unit.order_item_id
    assert alerts[0]["g2a_order_id"] == unit.g2a_order_id
    assert _unit(resources, order_id).status is G2APurchaseStatus.KEY_LOST
    # no retry loop, the order untouched, refunded once
    requests = sim_stats(sim)["requests"]
    assert f.run(order_id).lost_keys == 0 and sim_stats(sim)["requests"] == requests
    assert _order_status(resources, order_id) is OrderStatus.CANCELLED
    assert balance(resources.sessions, user_id) == FUNDS and refunds(resources, order_id) == 1
    assert poll_order_status(resources.sessions, sim_client(sim), resources.broker,
                             min_age_s=0).resumed == []

    code, report = _keysync_check("--g2a-paid", str(sim_stats(sim)["orders_paid"]))
    assert code == 0 and report["ok"], report  # alerted: listed, not a violation
    assert report["g2a_paid"] == {"delivered": 0, "kept_for_support": 0, "awaiting_key": 0,
                                  "key_lost": 1, "total": 1}
    (listed,) = report["paid_keys_not_fetched"]
    assert (listed["order_id"], listed["order_status"], listed["g2a_order_id"],
            listed["state"]) == (str(order_id), "CANCELLED", unit.g2a_order_id, "key_lost")
    human = subprocess.run([KEYSYNC, "check", "--no-cache"], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert human.returncode == 0, human.stderr
    assert "paid at G2A, key not fetched" in human.stdout
    assert str(unit.g2a_order_id) in human.stdout and "key_lost" in human.stdout


def test_check_fails_on_a_paid_key_nobody_fetched(resources: Resources, sim: SimServer) -> None:
    """Past the grace, a paid unit of a final order with no key and no alert is a
    violation: exit 1 naming the unit."""
    httpx.post(sim.url + "/_sim/config", json={"key_delay_s": 30})
    order_id, _ = _order(resources, sim)
    assert fulfiller(resources, sim).run(order_id).outcome is FulfilmentOutcome.PENDING
    app = TestClient(create_app(resources))
    _process(resources, _status_webhook(resources, app, order_id, "FAILED"))
    code, report = _keysync_check("--no-cache")
    assert code == 0 and report["paid_keys_not_fetched"][0]["state"] == "awaiting_key"
    with resources.sessions() as s, s.begin():  # as if nothing came back for an hour
        s.execute(text("UPDATE g2a_purchases SET updated_at = now() - interval '1 hour'"))
        s.execute(text("UPDATE orders SET updated_at = now() - interval '1 hour'"))
    code, report = _keysync_check("--no-cache")
    assert code == 1 and not report["ok"]
    (violation,) = report["violations"]["paid_keys_fetched_or_alerted"]
    assert violation["order_id"] == str(order_id) and violation["order_status"] == "FAILED"


def test_check_is_clean_after_a_normal_purchase(resources: Resources, sim: SimServer) -> None:
    order_id, user_id = _order(resources, sim)
    assert fulfiller(resources, sim).run(order_id).outcome is FulfilmentOutcome.COMPLETED
    app = TestClient(create_app(resources))
    view = _order_json(resources, app, user_id, order_id)  # fills the order cache entry
    assert view["status"] == "COMPLETED" and len(view["keys"]) == 1
    code, report = _keysync_check("--g2a-paid", str(sim_stats(sim)["orders_paid"]))
    assert code == 0 and report["ok"] and report["violations"] == {}, report
    assert report["cache_entries_compared"] >= 1
    assert report["g2a_paid"] == {"delivered": 1, "kept_for_support": 0, "awaiting_key": 0,
                                  "key_lost": 0, "total": 1}
    assert report["paid_keys_not_fetched"] == []
