"""G2A answers of every shape, from a real HTTP server: what the client tolerates, and what
it refuses as `G2AProtocolError` (never retried, never a guess, never echoing the input)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.g2a import G2AClient, G2AProtocolError
from tests.helpers import LiveServer

PRODUCT = ('{"id": 42, "name": "Crimson Empire", "slug": "crimson-empire", "qty": "3", '
           '"minPrice": 12.345678901234567890, "retail_min_price": "10.50", '
           '"updated_at": "2024-05-06 07:08:09", "platform": "", "region": "EU", '
           '"coverImage": "", "smallImage": "https://img/s.jpg", "thumbnail": "https://img/t", '
           '"someFieldG2AAddedLater": {"x": 1}}')


def page(*docs: str, total: str = "1") -> str:
    return f'{{"total": {total}, "page": 1, "docs": [{", ".join(docs)}]}}'


def product(**changes: object) -> str:
    doc = json.loads(PRODUCT)
    doc.update(changes)
    return json.dumps(doc)


class Answers:
    """What the fake G2A answers, per endpoint template, as raw JSON text."""

    def __init__(self) -> None:
        self.bodies: dict[str, str] = {}

    def route(self, template: str, methods: list[str]) -> Route:
        async def answer(request: Request) -> Response:
            return Response(self.bodies[template], media_type="application/json")

        return Route(template, answer, methods=methods)


@pytest.fixture(scope="module")
def fake_g2a() -> Iterator[tuple[LiveServer, Answers]]:
    answers = Answers()
    app = Starlette(routes=[
        answers.route("/v1/products", ["GET"]),
        answers.route("/v1/order", ["POST"]),
        answers.route("/v1/order/pay/{order_id}", ["PUT"]),
        answers.route("/v1/order/details/{order_id}", ["GET"]),
        answers.route("/v1/order/key/{order_id}", ["GET"]),
    ])
    with LiveServer(app) as server:
        yield server, answers


@pytest.fixture
def client(fake_g2a: tuple[LiveServer, Answers]) -> Iterator[G2AClient]:
    with httpx.Client(base_url=fake_g2a[0].url, timeout=5.0) as http:
        yield G2AClient(http, email="e@x", api_hash="h", api_secret="s", max_attempts=3,
                        sleep=lambda _: None)


@pytest.fixture
def answers(fake_g2a: tuple[LiveServer, Answers]) -> Answers:
    fake_g2a[1].bodies.clear()
    return fake_g2a[1]


def test_g2a_tolerance_numbers_as_text_exact_prices_empty_as_absent(
    client: G2AClient, answers: Answers,
) -> None:
    answers.bodies["/v1/products"] = page(PRODUCT, total='"1"')
    listed = client.list_products()
    assert (listed.total, listed.page) == (1, 1)
    [p] = listed.products
    assert (p.id, p.qty, p.platform, p.region) == ("42", 3, None, "EU")
    # JSON numbers are read as Decimal, never through float.
    assert p.min_price == Decimal("12.345678901234567890")
    assert p.retail_min_price == Decimal("10.50") == p.g2a_price
    assert p.updated_at == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert p.image_url == "https://img/s.jpg"  # first non-empty of cover, small, thumbnail

    answers.bodies["/v1/products"] = page(product(retail_min_price=None, minPrice="7",
                                                  updated_at=None, coverImage=None,
                                                  smallImage=None))
    [bare] = client.list_products().products
    assert bare.g2a_price == Decimal("7") and bare.updated_at is None
    assert bare.image_url == "https://img/t"


@pytest.mark.parametrize(("body", "where"), [
    (page(product(qty=True)), "docs.0.qty"),
    (page(product(qty=-1)), "docs.0.qty"),
    (page(product(qty="many")), "docs.0.qty"),
    (page(product(id="")), "docs.0.id"),
    (page(product(id=1.5)), "docs.0.id"),
    (page(product(id=True)), "docs.0.id"),
    (page(product(name=None)), "docs.0.name"),
    (page(product(minPrice="NaN")), "docs.0.minPrice"),
    (page(product(minPrice=-1)), "docs.0.minPrice"),
    (page(product(retail_min_price=True)), "docs.0.retail_min_price"),
    (page(product(updated_at="2024-05-06T07:08:09")), "docs.0.updated_at"),
    (page(product(platform=5)), "docs.0.platform"),
    (page(PRODUCT, '"not a product"'), "docs.1"),
    ('{"total": 1, "page": 1}', "docs"),
    ('{"total": 1, "page": 1, "docs": {}}', "docs"),
    (page(total='"x"'), "total"),
], ids=lambda value: value if len(value) < 30 else "")
def test_malformed_listing_is_a_protocol_error_naming_the_field(
    client: G2AClient, answers: Answers, body: str, where: str,
) -> None:
    answers.bodies["/v1/products"] = body
    with pytest.raises(G2AProtocolError) as refused:
        client.list_products()
    assert refused.value.code == "SHAPE"
    assert f"/v1/products answer: {where}: " in refused.value.message
    assert client.requests_made == 1  # a wrong shape is not retried


def test_order_answers_are_typed_and_malformed_ones_refused(
    client: G2AClient, answers: Answers,
) -> None:
    answers.bodies["/v1/order"] = '{"order_id": 9001, "price": 10.5, "currency": "EUR"}'
    created = client.create_order("42", max_price=Decimal("11"))
    assert (created.order_id, created.price, created.currency) == ("9001", Decimal("10.5"), "EUR")
    answers.bodies["/v1/order/details/{order_id}"] = (
        '{"status": "complete", "price": "10.50", "currency": "EUR"}')
    details = client.order_details("9001")
    assert (details.status, details.price) == ("complete", Decimal("10.50"))
    answers.bodies["/v1/order/pay/{order_id}"] = '{"status": true, "transaction_id": "t-1"}'
    assert client.pay_order("9001").transaction_id == "t-1"
    answers.bodies["/v1/order/key/{order_id}"] = '{"key": "AAAA-BBBB-CCCC"}'
    assert client.get_key("9001") == "AAAA-BBBB-CCCC"

    refused = [
        ("/v1/order", '{"order_id": "1", "currency": "EUR"}', "price"),
        ("/v1/order/pay/{order_id}", '{"status": 1, "transaction_id": "t"}', "status"),
        ("/v1/order/pay/{order_id}", '{"status": false, "transaction_id": "t"}', "status"),
        ("/v1/order/details/{order_id}", '{"status": "", "price": 1, "currency": "EUR"}',
         "status"),
        ("/v1/order/key/{order_id}", '{"key": ""}', "key"),
        ("/v1/order/key/{order_id}", '{"key": 123456789}', "key"),
    ]
    calls = {
        "/v1/order": lambda: client.create_order("42", max_price=Decimal("11")),
        "/v1/order/pay/{order_id}": lambda: client.pay_order("9001"),
        "/v1/order/details/{order_id}": lambda: client.order_details("9001"),
        "/v1/order/key/{order_id}": lambda: client.get_key("9001"),
    }
    for endpoint, body, where in refused:
        answers.bodies[endpoint] = body
        before = client.requests_made
        with pytest.raises(G2AProtocolError) as error:
            calls[endpoint]()
        assert f"{endpoint} answer: {where}: " in error.value.message, body
        assert client.requests_made == before + 1, body
        # The refused value is never echoed: a key answer must not leak into logs.
        assert "123456789" not in str(error.value)
