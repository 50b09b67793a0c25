"""The G2A simulator over real HTTP: contract §6 behaviour, controls and webhooks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from g2a_sim import DEFAULT_API_HASH, DEFAULT_API_SECRET, DEFAULT_EMAIL, SimServer
from services.g2a import auth_header

AUTH = {"Authorization": auth_header(DEFAULT_API_HASH, DEFAULT_EMAIL, DEFAULT_API_SECRET)}
DOC_FIELDS = {
    "id", "name", "type", "slug", "qty", "minPrice", "retail_min_price", "retailMinBasePrice",
    "availableToBuy", "thumbnail", "smallImage", "coverImage", "updated_at", "release_date",
    "region", "developer", "publisher", "platform", "categories",
}


def products(http: httpx.Client, **params: Any) -> httpx.Response:
    return http.get("/v1/products", params=params, headers=AUTH)


def all_docs(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    page = 1
    while True:
        body = products(http, page=page, **params).json()
        docs.extend(body["docs"])
        if len(body["docs"]) < 20:
            assert len(docs) == body["total"]
            return docs
        page += 1


def test_auth_required_and_checked(sim_http: httpx.Client) -> None:
    assert products(sim_http).status_code == 200
    for headers in ({}, {"Authorization": "sim-api-hash, deadbeef"}):
        r = sim_http.get("/v1/products", headers=headers)
        assert r.status_code == 401
        assert r.json()["status"] == "ERROR" and r.json()["code"] == "AUTH02"


def test_paging_docs_and_page_cap(sim_http: httpx.Client) -> None:
    first = products(sim_http, includeOutOfStock="true").json()
    assert first["total"] == 300 and first["page"] == 1 and len(first["docs"]) == 20
    assert set(first["docs"][0]) == DOC_FIELDS
    docs = all_docs(sim_http, includeOutOfStock="true")
    ids = [int(d["id"]) for d in docs]
    assert ids == sorted(set(ids)) and len(ids) == 300
    assert all(d["id"].isdigit() for d in docs)
    assert any(d["retail_min_price"] is None for d in docs)
    assert len({d["slug"] for d in docs}) == 300
    assert products(sim_http, page=16, includeOutOfStock="true").json()["docs"] == []
    for page in (0, 501, "x"):
        r = products(sim_http, page=page)
        assert r.status_code == 400 and r.json()["code"] == "BR01"
    assert products(sim_http, page=500).status_code == 200


def test_out_of_stock_hidden_by_default(sim_http: httpx.Client) -> None:
    everything = all_docs(sim_http, includeOutOfStock="true")
    visible = all_docs(sim_http)
    oos = [d for d in everything if d["qty"] == 0]
    assert 10 <= len(oos) <= 60  # ~10 %
    assert all(d["qty"] > 0 and d["availableToBuy"] for d in visible)
    assert len(visible) == len(everything) - len(oos)


def test_filters(sim_http: httpx.Client) -> None:
    everything = all_docs(sim_http, includeOutOfStock="true")
    in_range = all_docs(sim_http, includeOutOfStock="true", minPriceFrom="5.00",
                        minPriceTo="20.00")
    assert in_range and all(5 <= d["minPrice"] <= 20 for d in in_range)
    assert len(in_range) == sum(1 for d in everything if 5 <= d["minPrice"] <= 20)

    assert all(d["qty"] >= 100 for d in all_docs(sim_http, minQty=100))

    stamps = sorted(d["updated_at"] for d in everything)
    lo, hi = stamps[100], stamps[199]
    window = all_docs(sim_http, includeOutOfStock="true", updatedAtFrom=lo, updatedAtTo=hi)
    assert len(window) == sum(1 for d in everything if lo <= d["updated_at"] <= hi)
    assert {d["updated_at"] for d in window} >= {lo, hi}  # both bounds inclusive

    one = products(sim_http, id=everything[5]["id"], includeOutOfStock="true").json()
    assert one["total"] == 1 and one["docs"][0]["id"] == everything[5]["id"]
    assert products(sim_http, updatedAtFrom="yesterday").json()["code"] == "BR01"


def test_large_catalog_total_exceeds_listing_cap() -> None:
    started = time.perf_counter()
    with SimServer(products=25_000, rate_limit_per_min=0) as big, httpx.Client(
        base_url=big.url
    ) as http:
        assert time.perf_counter() - started < 3
        body = products(http, includeOutOfStock="true").json()
        assert body["total"] == 25_000
        t0 = time.perf_counter()
        last = products(http, page=500, includeOutOfStock="true").json()
        assert time.perf_counter() - t0 < 0.5
        assert len(last["docs"]) == 20
        assert products(http, page=501, includeOutOfStock="true").status_code == 400
        cheap = products(http, includeOutOfStock="true", minPriceTo="3.00").json()["total"]
        rest = products(http, includeOutOfStock="true", minPriceFrom="3.01").json()["total"]
        assert cheap + rest == 25_000 and 0 < cheap < 10_000


def _order(http: httpx.Client, product: dict[str, Any], max_price: float | None = None) -> Any:
    price = product["retail_min_price"] or product["minPrice"]
    body = {"product_id": product["id"], "currency": "EUR", "max_price": max_price or price}
    return http.post("/v1/order", json=body, headers=AUTH)


def test_order_lifecycle_key_once_and_idempotent_pay(sim_http: httpx.Client) -> None:
    product = products(sim_http, minQty=5).json()["docs"][0]
    before = sim_http.get("/_sim/stats").json()
    created = _order(sim_http, product).json()
    assert created["price"] == (product["retail_min_price"] or product["minPrice"])
    oid = created["order_id"]
    details = sim_http.get(f"/v1/order/details/{oid}", headers=AUTH).json()
    assert details["status"] == "new"
    r = sim_http.get(f"/v1/order/key/{oid}", headers=AUTH)
    assert r.status_code == 400 and r.json()["code"] == "ORD03"

    paid = sim_http.put(f"/v1/order/pay/{oid}", headers=AUTH).json()
    again = sim_http.put(f"/v1/order/pay/{oid}", headers=AUTH).json()
    assert paid["status"] is True and paid == again
    assert sim_http.get(f"/v1/order/details/{oid}", headers=AUTH).json()["status"] == "complete"
    key = sim_http.get(f"/v1/order/key/{oid}", headers=AUTH).json()["key"]
    assert len(key) == 17 and key.count("-") == 2
    r = sim_http.get(f"/v1/order/key/{oid}", headers=AUTH)
    assert r.status_code == 400 and r.json()["code"] == "ORD04"

    after = sim_http.get("/_sim/stats").json()
    assert after["payments"] - before["payments"] == 1
    assert after["keys_issued"] - before["keys_issued"] == 1
    assert after["key_requests_rejected"] - before["key_requests_rejected"] == 2
    qty_now = products(sim_http, id=product["id"]).json()["docs"][0]["qty"]
    assert qty_now == product["qty"] - 1

    r = sim_http.get("/v1/order/details/999", headers=AUTH)
    assert r.status_code == 404 and r.json()["code"] == "ORD02"


def test_order_errors(sim_http: httpx.Client) -> None:
    docs = all_docs(sim_http, includeOutOfStock="true")
    in_stock = next(d for d in docs if d["qty"] > 0)
    oos = next(d for d in docs if d["qty"] == 0)
    assert _order(sim_http, oos).json()["code"] == "ORD01"
    r = _order(sim_http, in_stock, max_price=0.01)
    assert r.status_code == 400 and r.json()["code"] == "ORD05"
    r = _order(sim_http, {**in_stock, "id": "1"})
    assert r.status_code == 400 and r.json()["code"] == "BR01"
    try:
        sim_http.post("/_sim/config", json={"funds": 0})
        r = _order(sim_http, in_stock)
        assert r.status_code == 403 and r.json()["code"] == "ORD112"
    finally:
        sim_http.post("/_sim/config", json={"funds": 1_000_000})


def test_key_delay_pending_then_complete() -> None:
    with SimServer(products=50, key_delay_s=0.3) as slow, httpx.Client(base_url=slow.url) as http:
        product = products(http).json()["docs"][0]
        oid = _order(http, product).json()["order_id"]
        http.put(f"/v1/order/pay/{oid}", headers=AUTH)
        assert http.get(f"/v1/order/details/{oid}", headers=AUTH).json()["status"] == "pending"
        assert http.get(f"/v1/order/key/{oid}", headers=AUTH).json()["code"] == "ORD03"
        time.sleep(0.35)
        assert http.get(f"/v1/order/details/{oid}", headers=AUTH).json()["status"] == "complete"
        assert http.get(f"/v1/order/key/{oid}", headers=AUTH).status_code == 200


def test_rate_limit_answers_429_br03_with_retry_after() -> None:
    with SimServer(products=20, rate_limit_per_min=60) as limited, httpx.Client(
        base_url=limited.url
    ) as http:
        statuses = [products(http).status_code for _ in range(6)]
        assert statuses[:3] == [200, 200, 200]  # burst: three seconds' worth, at least 2
        r = products(http)
        assert r.status_code == 429 and r.json()["code"] == "BR03"
        assert int(r.headers["Retry-After"]) >= 1
        assert http.get("/_sim/stats").json()["rate_limited"] >= 4


def test_faults_are_injected_and_cleared(sim_http: httpx.Client) -> None:
    sim_http.post("/_sim/faults", json={"status": 500, "count": 2, "paths": "/v1/products"})
    assert [products(sim_http).status_code for _ in range(3)] == [500, 500, 200]
    sim_http.post("/_sim/faults", json={"status": 0, "count": 1})
    r = products(sim_http)
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        r.json()
    sim_http.post("/_sim/faults", json={"latency_ms": 200, "count": 1})
    t0 = time.perf_counter()
    assert products(sim_http).status_code == 200
    assert time.perf_counter() - t0 >= 0.2
    sim_http.post("/_sim/faults", json={"status": 503, "rate": 0.5})
    codes = [products(sim_http).status_code for _ in range(40)]
    assert 5 <= codes.count(503) <= 35 and codes.count(200) == 40 - codes.count(503)
    sim_http.delete("/_sim/faults")
    assert products(sim_http).status_code == 200
    assert sim_http.get("/_sim/stats").json()["faults_injected"] >= 4


def test_mutate_bumps_updated_at_for_exactly_the_touched_products() -> None:
    with SimServer(products=200, seed=3, rate_limit_per_min=0) as s, httpx.Client(
        base_url=s.url
    ) as http:
        since = datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%d %H:%M:%S")
        assert products(http, updatedAtFrom=since, includeOutOfStock="true").json()["total"] == 0
        result = http.post(
            "/_sim/mutate", json={"changed": 5, "added": 3, "removed": 2, "out_of_stock": 4}
        ).json()
        touched = set(result["changed"]) | set(result["added"]) | set(result["out_of_stock"])
        assert len(touched) == 12
        found = all_docs(http, updatedAtFrom=since, includeOutOfStock="true")
        assert {d["id"] for d in found} == touched
        assert all(d["qty"] == 0 for d in found if d["id"] in result["out_of_stock"])
        everything = {d["id"] for d in all_docs(http, includeOutOfStock="true")}
        assert len(everything) == 201 and not everything & set(result["removed"])

    # Deterministic: the same seed and mutation give the same ids.
    with SimServer(products=200, seed=3, rate_limit_per_min=0) as s2:
        again = httpx.post(
            s2.url + "/_sim/mutate",
            json={"changed": 5, "added": 3, "removed": 2, "out_of_stock": 4},
        ).json()
        assert {k: again[k] for k in ("changed", "added", "removed", "out_of_stock")} == {
            k: result[k] for k in ("changed", "added", "removed", "out_of_stock")
        }


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: list[tuple[dict[str, str], bytes]] = []
    handler = type("Handler", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/webhooks/g2a", received
    server.shutdown()
    server.server_close()


def test_webhook_signed_per_standard_webhooks(
    receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    url, received = receiver
    secret_bytes = b"a-test-secret-of-some-length-32b"
    secret = "whsec_" + base64.b64encode(secret_bytes).decode()
    with SimServer(products=30, webhook_url=url, webhook_secret=secret,
                   key_delay_s=0.2) as s, httpx.Client(base_url=s.url) as http:
        product = products(http).json()["docs"][0]
        oid = _order(http, product).json()["order_id"]
        http.put(f"/v1/order/pay/{oid}", headers=AUTH)
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(received) == 1
    headers, body = received[0]
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(secret_bytes, signed, hashlib.sha256).digest()).decode()
    version, signature = headers["webhook-signature"].split(",", 1)
    assert version == "v1" and hmac.compare_digest(signature, expected)
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 10
    event = json.loads(body)
    assert event["type"] == "order.status_changed"
    assert event["data"]["external_order_id"] == oid and event["data"]["status"] == "COMPLETED"
    datetime.fromisoformat(event["data"]["occurred_at"])
