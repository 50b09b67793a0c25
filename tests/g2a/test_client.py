"""G2AClient against the real simulator over HTTP, with the rate limiter on real Redis."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
import redis
import structlog

from g2a_sim import DEFAULT_API_HASH, DEFAULT_API_SECRET, DEFAULT_EMAIL, SimServer
from services.g2a import G2AClient, RateLimiter, RateLimitTimeout, auth_header
from services.g2a import errors as g2a

MakeClient = Callable[..., G2AClient]


def test_auth_header_format() -> None:
    value = auth_header("h", "e@x", "s")
    assert value == "h, " + __import__("hashlib").sha256(b"he@xs").hexdigest()


def test_list_products_parses_typed_products(sim: SimServer, make_g2a: MakeClient) -> None:
    client = make_g2a(sim)
    page = client.list_products(page=2)
    assert page.total == 300 and page.page == 2 and len(page.products) == 20
    p = page.products[0]
    assert isinstance(p.min_price, Decimal) and p.updated_at is not None
    assert p.updated_at.tzinfo is not None and p.image_url
    everything = [
        prod for n in range(1, 16) for prod in client.list_products(page=n).products
    ]
    no_retail = [prod for prod in everything if prod.retail_min_price is None]
    assert no_retail and all(prod.g2a_price == prod.min_price for prod in no_retail)
    assert any(prod.qty == 0 for prod in everything)
    hidden = client.list_products(include_out_of_stock=False)
    assert hidden.total == sum(1 for prod in everything if prod.qty > 0)
    cheap = client.list_products(min_price_from=Decimal("1"), min_price_to=Decimal("4.99"))
    assert all(Decimal("1") <= prod.min_price <= Decimal("4.99")  # type: ignore[operator]
               for prod in cheap.products)
    stamp = everything[0].updated_at
    assert stamp is not None
    exact = client.list_products(updated_at_from=stamp, updated_at_to=stamp + timedelta(0))
    assert everything[0].id in {prod.id for prod in exact.products}
    assert client.list_products(product_id=everything[3].id).products == [everything[3]]
    assert client.requests_made == 1 + 15 + 4


def test_order_flow_and_typed_errors(sim: SimServer, make_g2a: MakeClient) -> None:
    client = make_g2a(sim)
    product = client.list_products(min_qty=5).products[0]
    assert product.g2a_price is not None
    order = client.create_order(product.id, max_price=product.g2a_price)
    assert order.price == product.g2a_price and order.currency == "EUR"
    assert client.order_details(order.order_id).status == "new"
    with pytest.raises(g2a.G2APaymentNotReady) as not_ready:
        client.get_key(order.order_id)
    assert not_ready.value.code == "ORD03"
    payment = client.pay_order(order.order_id)
    assert client.pay_order(order.order_id) == payment
    assert client.order_details(order.order_id).status == "complete"
    assert client.get_key(order.order_id).count("-") == 2
    with pytest.raises(g2a.G2AKeyAlreadyDownloaded):
        client.get_key(order.order_id)
    with pytest.raises(g2a.G2AOrderNotFound) as missing:
        client.order_details("404404")
    assert missing.value.http_status == 404
    with pytest.raises(g2a.G2ABadRequest) as bad:
        client.list_products(page=501)
    assert bad.value.code == "BR01"
    with pytest.raises(g2a.G2ABadRequest) as too_cheap:
        client.create_order(product.id, max_price=Decimal("0.01"))
    assert too_cheap.value.code == "ORD05"
    httpx.post(sim.url + "/_sim/config", json={"funds": 0})
    try:
        with pytest.raises(g2a.G2AInsufficientFunds):
            client.create_order(product.id, max_price=product.g2a_price)
    finally:
        httpx.post(sim.url + "/_sim/config", json={"funds": 1_000_000})
    wrong = G2AClient(
        httpx.Client(base_url=sim.url), email=DEFAULT_EMAIL, api_hash=DEFAULT_API_HASH,
        api_secret="nope",
    )
    with pytest.raises(g2a.G2AAuthError):
        wrong.list_products()
    assert wrong.requests_made == 1  # 4xx business errors are never retried


def _fault(sim: SimServer, **spec: object) -> None:
    """The one fault from now on (faults stack: whatever was still armed goes first)."""
    httpx.delete(sim.url + "/_sim/faults").raise_for_status()
    httpx.post(sim.url + "/_sim/faults", json=spec).raise_for_status()


@pytest.mark.usefixtures("sim_http")
def test_retries_transient_faults_then_succeeds(sim: SimServer, make_g2a: MakeClient) -> None:
    slept: list[float] = []
    client = make_g2a(sim, sleep=slept.append)
    _fault(sim, status=500, count=2)
    assert client.list_products().total > 0
    assert client.requests_made == 3 and len(slept) == 2

    _fault(sim, status=429, count=1)
    client = make_g2a(sim, sleep=slept.append, max_wait_s=5.0)
    slept.clear()
    assert client.list_products().total > 0
    assert 1.0 <= slept[0] <= 1.1  # Retry-After: 1, with a little jitter

    _fault(sim, status=0, count=1)  # malformed JSON body with 200
    assert make_g2a(sim).list_products().total > 0

    _fault(sim, latency_ms=400, count=1)
    timed = make_g2a(sim, timeout=0.2)
    assert timed.list_products().total > 0
    assert timed.requests_made == 2


@pytest.mark.usefixtures("sim_http")
def test_gives_up_with_typed_errors(sim: SimServer, make_g2a: MakeClient) -> None:
    _fault(sim, status=503, rate=1.0)
    client = make_g2a(sim, max_attempts=3)
    with pytest.raises(g2a.G2AUnavailable) as unavailable:
        client.list_products()
    assert unavailable.value.http_status == 503 and client.requests_made == 3

    _fault(sim, status=429, rate=1.0)
    client = make_g2a(sim, max_attempts=2, sleep=lambda _: None)
    with pytest.raises(g2a.G2ARateLimited) as limited:
        client.list_products()
    assert limited.value.retry_after == 1.0 and client.requests_made == 2

    _fault(sim, status=0, rate=1.0)
    client = make_g2a(sim, max_attempts=2)
    with pytest.raises(g2a.G2AProtocolError):
        client.list_products()


@pytest.mark.usefixtures("sim_http")
def test_create_order_is_not_retried_once_it_may_have_reached_g2a(
    sim: SimServer, make_g2a: MakeClient
) -> None:
    client = make_g2a(sim)
    product = client.list_products(min_qty=5).products[0]
    assert product.g2a_price is not None
    before = httpx.get(sim.url + "/_sim/stats").json()["requests_by_path"]["/v1/order"]
    _fault(sim, status=500, count=1, paths="/v1/order")
    with pytest.raises(g2a.G2AUnavailable):
        client.create_order(product.id, max_price=product.g2a_price)
    after = httpx.get(sim.url + "/_sim/stats").json()["requests_by_path"]["/v1/order"]
    assert after - before == 1

    _fault(sim, status=429, count=1, paths="/v1/order")  # refused, so safe to repeat
    assert client.create_order(product.id, max_price=product.g2a_price).order_id


def test_connect_errors_are_retried_even_for_create_order(make_g2a: MakeClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = G2AClient(
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=1.0), email="e",
        api_hash="h", api_secret="s", max_attempts=3, sleep=lambda _: None,
    )
    with pytest.raises(g2a.G2AUnavailable) as exc:
        client.create_order("1", max_price=Decimal("1"))
    assert exc.value.request_sent is False and client.requests_made == 0


def test_secrets_never_logged(sim: SimServer, make_g2a: MakeClient) -> None:
    client = make_g2a(sim)
    with structlog.testing.capture_logs() as logs:
        product = client.list_products(min_qty=1).products[0]
        assert product.g2a_price is not None
        order = client.create_order(product.id, max_price=product.g2a_price)
        client.pay_order(order.order_id)
        key = client.get_key(order.order_id)
    header = auth_header(DEFAULT_API_HASH, DEFAULT_EMAIL, DEFAULT_API_SECRET)
    dumped = repr(logs) + repr(client)
    assert logs and all(entry["event"] == "g2a.request" for entry in logs)
    assert {"endpoint", "status", "latency_ms", "attempt"} <= set(logs[0])
    for secret in (header.split(", ")[1], DEFAULT_API_SECRET, key):
        assert secret not in dumped


def test_rate_limiter_keeps_client_under_the_sim_limit(redis_client: redis.Redis) -> None:
    with SimServer(products=40, rate_limit_per_min=1200) as limited, httpx.Client(
        base_url=limited.url
    ) as raw:
        headers = {"Authorization": auth_header(DEFAULT_API_HASH, DEFAULT_EMAIL,
                                                DEFAULT_API_SECRET)}
        statuses = [raw.get("/v1/products", headers=headers).status_code for _ in range(80)]
        assert 429 in statuses  # without pacing the burst trips the limit
        time.sleep(3)  # let the simulator's bucket refill
        raw.post("/_sim/reset")
        limiter = RateLimiter(redis_client, 1200)
        clients = [
            G2AClient(httpx.Client(base_url=limited.url), email=DEFAULT_EMAIL,
                      api_hash=DEFAULT_API_HASH, api_secret=DEFAULT_API_SECRET,
                      rate_limiter=limiter, max_attempts=1)
            for _ in range(2)
        ]
        started = time.monotonic()
        for i in range(80):
            clients[i % 2].list_products()
        elapsed = time.monotonic() - started
        stats = raw.get("/_sim/stats").json()
    assert stats["rate_limited"] == 0 and stats["requests"] == 80
    assert elapsed >= 1.5  # 40 burst, then 20/s for the other 40


def test_rate_limiter_is_shared_and_times_out(redis_client: redis.Redis) -> None:
    a = RateLimiter(redis_client, 60, key="g2a:ratelimit:test")
    b = RateLimiter(redis_client, 60, key="g2a:ratelimit:test")
    a.acquire()
    b.acquire()  # burst of 2 at 1/s, shared across instances
    assert a.try_acquire() > 0.5
    with pytest.raises(RateLimitTimeout):
        b.acquire(timeout_s=0.1)
    t0 = time.monotonic()
    a.acquire(timeout_s=2)
    assert 0.3 < time.monotonic() - t0 < 1.5
    assert redis_client.ttl("g2a:ratelimit:test") > 0


def test_naive_datetimes_rejected(sim: SimServer, make_g2a: MakeClient) -> None:
    with pytest.raises(ValueError):
        make_g2a(sim).list_products(updated_at_from=datetime(2024, 1, 1))
    assert make_g2a(sim).list_products(updated_at_from=datetime(2030, 1, 1, tzinfo=UTC)).total == 0


def test_dead_rate_limiter_redis_does_not_stop_g2a_calls(
    sim: SimServer, make_g2a: MakeClient, dead_redis_url: str
) -> None:
    dead = redis.Redis.from_url(dead_redis_url, socket_connect_timeout=0.1)
    client = make_g2a(sim, rate_limiter=RateLimiter(dead, 600))
    page = client.list_products(page=1)
    assert page.products


def test_requests_and_429s_are_counted_in_metrics(
    sim: SimServer, sim_http: httpx.Client, make_g2a: MakeClient
) -> None:
    from services.metrics import G2A_RATE_LIMITED, G2A_REQUESTS

    ok = G2A_REQUESTS.labels("/v1/products", "200")
    limited = G2A_RATE_LIMITED.labels("/v1/products")
    ok_before, limited_before = ok._value.get(), limited._value.get()
    sim_http.post("/_sim/faults", json={"status": 429, "count": 1})
    client = make_g2a(sim)
    client.list_products(page=1)
    assert ok._value.get() == ok_before + 1
    assert limited._value.get() == limited_before + 1
    assert client.requests_made == 2


@pytest.mark.usefixtures("sim_http")
def test_get_product_finds_or_confirms_absence_paced_and_retried(
    sim: SimServer, make_g2a: MakeClient, redis_client: redis.Redis,
) -> None:
    limiter = RateLimiter(redis_client, 600_000)
    client = make_g2a(sim, rate_limiter=limiter)
    everything = [p for n in range(1, 16) for p in client.list_products(page=n).products]
    out_of_stock = next(p for p in everything if p.qty == 0)
    assert client.get_product(out_of_stock.id) == out_of_stock  # out of stock is not absent
    assert client.get_product("1") is None
    before = client.requests_made
    _fault(sim, status=503, count=2, only="lookup")
    assert client.get_product(everything[7].id) == everything[7]
    assert client.requests_made - before == 3  # the same retry policy as every call
    _fault(sim, status=503, rate=1.0, only="lookup")
    with pytest.raises(g2a.G2AUnavailable):
        make_g2a(sim, max_attempts=2).get_product(everything[7].id)
    with pytest.raises(ValueError, match="product_id"):
        client.get_product(" ")


def test_get_product_refuses_an_answer_that_ignored_the_id_filter() -> None:
    """A G2A (or proxy) that drops `id=` answers page 1 of everything: that must be an error,
    not "absent", since the catalog sync deactivates games on absence."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.helpers import LiveServer

    with SimServer(products=40, seed=9, rate_limit_per_min=0) as real:
        listed = httpx.get(real.url + "/v1/products", params={"includeOutOfStock": "true"},
                           headers={"Authorization": auth_header(
                               DEFAULT_API_HASH, DEFAULT_EMAIL, DEFAULT_API_SECRET)}).json()

    async def ignores_id(request: Request) -> JSONResponse:
        return JSONResponse(listed)

    async def empty_but_total(request: Request) -> JSONResponse:
        return JSONResponse({"total": 5, "page": 1, "docs": []})

    app = Starlette(routes=[Route("/v1/products", ignores_id),
                            Route("/odd/v1/products", empty_but_total)])
    with LiveServer(app) as server:
        clients = [G2AClient(httpx.Client(base_url=base, timeout=5.0), email=DEFAULT_EMAIL,
                             api_hash=DEFAULT_API_HASH, api_secret=DEFAULT_API_SECRET,
                             max_attempts=1)
                   for base in (server.url, server.url + "/odd")]
        for client in clients:
            with pytest.raises(g2a.G2AProtocolError, match="look-up of product 1 "):
                client.get_product("1")
        # A product that happens to be in the unfiltered answer does exist: found.
        on_page = listed["docs"][2]["id"]
        found = clients[0].get_product(on_page)
        assert found is not None and found.id == on_page
