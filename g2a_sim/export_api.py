"""The simulated G2A Export API under `/v1`: what a gateway does first (stats, rate limit,
injected faults, auth), then the listing and the order endpoints over `state.SimState`."""

from __future__ import annotations

import asyncio
import hmac
import json
import math
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from g2a_sim.catalog import MAX_PAGE, ListingFilter, money, parse_datetime, to_cents
from g2a_sim.faults import fire
from g2a_sim.state import SimError, SimState

MALFORMED_BODY = b'{"status": "OK", "total": 3, "docs": [{"id": '

# An endpoint's own work: the JSON answer, or a `SimError` for G2A's error answer.
Handler = Callable[[Request], Awaitable[dict[str, Any]]]
Endpoint = Callable[[Request], Awaitable[Response]]


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"status": "ERROR", "code": code, "message": message}, status_code=status, headers=headers
    )


def _template(path: str) -> str:
    for prefix in ("/v1/order/pay/", "/v1/order/details/", "/v1/order/key/"):
        if path.startswith(prefix):
            return prefix + "{order_id}"
    return path


def _bad_request(message: str) -> SimError:
    return SimError(400, "BR01", f"Bad request: {message}")


def export_routes(state: SimState, authorization: str) -> list[Route]:
    """The `/v1` routes; `authorization` is the one `Authorization` header accepted."""

    async def guard(request: Request) -> Response | None:
        """Stats, rate limit, injected faults and auth, in the order a gateway applies them."""
        path = _template(request.url.path)
        target = None
        if request.url.path == "/v1/products":
            target = "lookup" if request.query_params.get("id") else "listing"
        with state.lock:
            state.stats.requests += 1
            by_path = state.stats.requests_by_path
            by_path[path] = by_path.get(path, 0) + 1
            wait = state.rate_limit.take()
            if wait > 0:
                state.stats.rate_limited += 1
            fault = None if wait > 0 else fire(state.faults, request.url.path, target)
            if fault is not None:
                state.stats.faults_injected += 1
        if wait > 0:
            retry_after = str(max(1, math.ceil(wait)))
            return error(429, "BR03", "Too many requests", {"Retry-After": retry_after})
        if fault is not None:
            if fault.latency_ms:
                await asyncio.sleep(fault.latency_ms / 1000)
            if fault.empty_listing:
                page = request.query_params.get("page", "1")
                return JSONResponse(
                    {"total": 0, "page": int(page) if page.isdigit() else 1, "docs": []}
                )
            if fault.status == 0:
                return Response(MALFORMED_BODY, media_type="application/json")
            if fault.status == 429:
                return error(429, "BR03", "Too many requests (injected)", {"Retry-After": "1"})
            if fault.status is not None:
                return error(fault.status, f"SIM{fault.status}", "injected fault")
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), authorization.encode()):
            return error(401, "AUTH02", "Unauthorized: invalid or missing credentials")
        return None

    def endpoint(handler: Handler) -> Endpoint:
        async def answer(request: Request) -> Response:
            if (denied := await guard(request)) is not None:
                return denied
            try:
                return JSONResponse(await handler(request))
            except SimError as exc:
                return error(exc.http_status, exc.code, exc.message)

        return answer

    @endpoint
    async def products(request: Request) -> dict[str, Any]:
        q = request.query_params
        try:
            page = int(q.get("page", "1"))
            flt = ListingFilter(
                include_out_of_stock=q.get("includeOutOfStock", "false").lower()
                in ("true", "1", "yes"),
                min_qty=int(q["minQty"]) if q.get("minQty") else None,
                updated_from=parse_datetime(q["updatedAtFrom"]) if q.get("updatedAtFrom") else None,
                updated_to=parse_datetime(q["updatedAtTo"]) if q.get("updatedAtTo") else None,
                price_from=to_cents(Decimal(q["minPriceFrom"])) if q.get("minPriceFrom") else None,
                price_to=to_cents(Decimal(q["minPriceTo"])) if q.get("minPriceTo") else None,
                product_id=q.get("id") or None,
            )
        except (ValueError, InvalidOperation) as exc:
            raise _bad_request("invalid query parameter") from exc
        if not 1 <= page <= MAX_PAGE:
            raise _bad_request(f"page must be between 1 and {MAX_PAGE}")
        total, docs = state.listing(page, flt)
        return {"total": total, "page": page, "docs": docs}

    @endpoint
    async def create_order(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body(), parse_float=Decimal)
            product_id = str(body["product_id"])
            currency = str(body.get("currency") or "EUR")
            raw_max = body.get("max_price")
            max_price = Decimal(str(raw_max)) if raw_max is not None else Decimal("1e9")
        except (ValueError, KeyError, TypeError, InvalidOperation) as exc:
            raise _bad_request("expected {product_id, currency, max_price}") from exc
        order = state.create_order(product_id, currency, max_price)
        return {"order_id": order.order_id, "price": money(order.price), "currency": order.currency}

    @endpoint
    async def pay(request: Request) -> dict[str, Any]:
        order = state.pay(request.path_params["order_id"])
        return {"status": True, "transaction_id": order.transaction_id}

    @endpoint
    async def details(request: Request) -> dict[str, Any]:
        order, status = state.details(request.path_params["order_id"])
        return {"status": status, "price": money(order.price), "currency": order.currency}

    @endpoint
    async def key(request: Request) -> dict[str, Any]:
        return {"key": state.take_key(request.path_params["order_id"])}

    return [
        Route("/v1/products", products, methods=["GET"]),
        Route("/v1/order", create_order, methods=["POST"]),
        Route("/v1/order/pay/{order_id}", pay, methods=["PUT"]),
        Route("/v1/order/details/{order_id}", details, methods=["GET"]),
        Route("/v1/order/key/{order_id}", key, methods=["GET"]),
    ]
