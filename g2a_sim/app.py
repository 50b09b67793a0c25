"""HTTP face of the G2A simulator: the Export API under `/v1`, test controls under `/_sim`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import heapq
import hmac
import json
import math
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from g2a_sim.catalog import (
    FAULT_TARGETS,
    MAX_PAGE,
    Fault,
    ListingFilter,
    SimError,
    SimState,
    parse_datetime,
    to_cents,
)

log = structlog.get_logger("g2a_sim")

DEFAULT_EMAIL = "sim@keysync.local"
DEFAULT_API_HASH = "sim-api-hash"
DEFAULT_API_SECRET = "sim-api-secret"
# The simulator's own test secret, used only when started without --webhook-secret (keysync
# has no default: `keysync up` passes the secret it generated). Public on purpose: it signs
# webhooks for a local stand-in, and keysync accepts it only if an operator configures it.
DEFAULT_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"keysync-dev-webhook-secret-32by").decode()
MALFORMED_BODY = b'{"status": "OK", "total": 3, "docs": [{"id": '


@dataclass(frozen=True, slots=True)
class SimConfig:
    products: int = 1000
    seed: int = 42
    rate_limit_per_min: int = 600  # 0 = unlimited
    webhook_url: str | None = None
    webhook_secret: str | None = None  # whsec_<base64>; DEFAULT_WEBHOOK_SECRET when None
    email: str = DEFAULT_EMAIL
    api_hash: str = DEFAULT_API_HASH
    api_secret: str = DEFAULT_API_SECRET
    key_delay_s: float = 0.0
    funds: Decimal = Decimal("1000000000")


def expected_authorization(config: SimConfig) -> str:
    digest = hashlib.sha256(f"{config.api_hash}{config.email}{config.api_secret}".encode())
    return f"{config.api_hash}, {digest.hexdigest()}"


def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class WebhookSender:
    """Delivers `order.status_changed` events from one background thread, never from a
    request, retrying failed deliveries with backoff (same `webhook-id` each time, as
    Standard Webhooks senders do, so the receiver can deduplicate)."""

    ATTEMPTS = 5

    def __init__(self, state: SimState, url: str, secret: str) -> None:
        self._state = state
        self._url = url
        self._secret = secret
        self._queue: list[tuple[float, int, str, bytes, int]] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="g2a-sim-webhooks", daemon=True)
        self.delivered = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def order_completed(self, order_id: str) -> None:
        body = json.dumps(
            {
                "type": "order.status_changed",
                "data": {
                    "external_order_id": order_id,
                    "status": "COMPLETED",
                    "occurred_at": datetime.now(UTC).isoformat(),
                },
            },
            separators=(",", ":"),
        ).encode()
        self._push(time.monotonic(), f"msg_{uuid.uuid4().hex}", body, 1)

    def _push(self, due: float, msg_id: str, body: bytes, attempt: int) -> None:
        with self._cond:
            heapq.heappush(self._queue, (due, attempt, msg_id, body, attempt))
            self._cond.notify()

    def _run(self) -> None:
        with httpx.Client(timeout=5.0) as http:
            while True:
                with self._cond:
                    if self._stop:
                        return
                    now = time.monotonic()
                    if not self._queue or self._queue[0][0] > now:
                        wait = 0.1 if not self._queue else min(0.1, self._queue[0][0] - now)
                        self._cond.wait(timeout=wait)
                        item = None
                    else:
                        item = heapq.heappop(self._queue)
                # Orders whose key_delay_s elapsed since the last look complete "by
                # themselves", as on G2A; their events come from this ticker.
                for order_id in self._state.due_for_completion():
                    self.order_completed(order_id)
                if item is not None:
                    self._deliver(http, item[2], item[3], item[4])

    def _deliver(self, http: httpx.Client, msg_id: str, body: bytes, attempt: int) -> None:
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign_webhook(self._secret, msg_id, ts, body),
        }
        status: int | None = None
        error: str | None = None
        try:
            status = http.post(self._url, content=body, headers=headers).status_code
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        if status is not None and 200 <= status < 300:
            self.delivered += 1
            log.info("sim.webhook_delivered", webhook_id=msg_id, status=status, attempt=attempt)
            return
        log.warning("sim.webhook_failed", webhook_id=msg_id, status=status, error=error,
                    attempt=attempt)
        if attempt < self.ATTEMPTS:
            self._push(time.monotonic() + 0.5 * 2 ** (attempt - 1), msg_id, body, attempt + 1)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"status": "ERROR", "code": code, "message": message}, status_code=status, headers=headers
    )


def _template(path: str) -> str:
    for prefix in ("/v1/order/pay/", "/v1/order/details/", "/v1/order/key/"):
        if path.startswith(prefix):
            return prefix + "{order_id}"
    return path


def _money(cents: int) -> float:
    return cents / 100


def create_app(config: SimConfig | None = None) -> Starlette:
    config = config or SimConfig()
    sender: WebhookSender | None = None
    state = SimState(
        products=config.products,
        seed=config.seed,
        rate_limit_per_min=config.rate_limit_per_min,
        key_delay_s=config.key_delay_s,
        funds=config.funds,
    )
    if config.webhook_url:
        sender = WebhookSender(
            state, config.webhook_url, config.webhook_secret or DEFAULT_WEBHOOK_SECRET
        )
        state.on_complete = sender.order_completed
    authorization = expected_authorization(config)
    fault_seq = 0

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
            fault = state.fault
            fire = False
            if wait <= 0 and fault is not None and fault.applies_to(request.url.path, target):
                if fault.skip > 0:
                    fault.skip -= 1
                else:
                    fire = fault.rng.random() < fault.rate
                if fire:
                    state.stats.faults_injected += 1
                    if fault.count is not None:
                        fault.count -= 1
                        if fault.count <= 0:
                            state.fault = None
        if wait > 0:
            retry_after = str(max(1, math.ceil(wait)))
            return _error(429, "BR03", "Too many requests", {"Retry-After": retry_after})
        if fire and fault is not None:
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
                return _error(429, "BR03", "Too many requests (injected)", {"Retry-After": "1"})
            if fault.status is not None:
                return _error(fault.status, f"SIM{fault.status}", "injected fault")
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), authorization.encode()):
            return _error(401, "AUTH02", "Unauthorized: invalid or missing credentials")
        return None

    async def products(request: Request) -> Response:
        if (denied := await guard(request)) is not None:
            return denied
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
        except (ValueError, InvalidOperation):
            return _error(400, "BR01", "Bad request: invalid query parameter")
        if not 1 <= page <= MAX_PAGE:
            return _error(400, "BR01", f"Bad request: page must be between 1 and {MAX_PAGE}")
        total, docs = state.listing(page, flt)
        return JSONResponse({"total": total, "page": page, "docs": docs})

    async def create_order(request: Request) -> Response:
        if (denied := await guard(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body(), parse_float=Decimal)
            product_id = str(body["product_id"])
            currency = str(body.get("currency") or "EUR")
            raw_max = body.get("max_price")
            max_price = Decimal(str(raw_max)) if raw_max is not None else Decimal("1e9")
        except (ValueError, KeyError, TypeError, InvalidOperation):
            return _error(400, "BR01", "Bad request: expected {product_id, currency, max_price}")
        try:
            order = state.create_order(product_id, currency, max_price)
        except SimError as exc:
            return _error(exc.http_status, exc.code, exc.message)
        return JSONResponse(
            {"order_id": order.order_id, "price": _money(order.price), "currency": order.currency}
        )

    async def pay(request: Request) -> Response:
        if (denied := await guard(request)) is not None:
            return denied
        try:
            order = state.pay(request.path_params["order_id"])
        except SimError as exc:
            return _error(exc.http_status, exc.code, exc.message)
        return JSONResponse({"status": True, "transaction_id": order.transaction_id})

    async def details(request: Request) -> Response:
        if (denied := await guard(request)) is not None:
            return denied
        try:
            order, status = state.details(request.path_params["order_id"])
        except SimError as exc:
            return _error(exc.http_status, exc.code, exc.message)
        return JSONResponse(
            {"status": status, "price": _money(order.price), "currency": order.currency}
        )

    async def key(request: Request) -> Response:
        if (denied := await guard(request)) is not None:
            return denied
        try:
            value = state.take_key(request.path_params["order_id"])
        except SimError as exc:
            return _error(exc.http_status, exc.code, exc.message)
        return JSONResponse({"key": value})

    # -- /_sim controls ---------------------------------------------------------------

    async def _json(request: Request) -> dict[str, Any]:
        raw = await request.body()
        data = json.loads(raw) if raw.strip() else {}
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return data

    async def set_faults(request: Request) -> Response:
        nonlocal fault_seq
        try:
            body = await _json(request)
            status = body.get("status")
            count = body.get("count")
            empty_listing = body.get("empty_listing", False)
            if not isinstance(empty_listing, bool):
                raise ValueError("empty_listing must be true or false")
            only = body.get("only") or ("listing" if empty_listing else None)
            fault = Fault(
                rate=float(body.get("rate", 1.0)),
                status=None if status is None else int(status),
                latency_ms=int(body.get("latency_ms") or 0),
                count=None if count is None else int(count),
                skip=int(body.get("skip") or 0),
                paths=body.get("paths") or None,
                only=only,
                empty_listing=empty_listing,
            )
            if not 0.0 <= fault.rate <= 1.0:
                raise ValueError("rate must be within 0..1")
            if fault.count is not None and fault.count < 1:
                raise ValueError("count must be at least 1 (omit it for no limit)")
            if fault.skip < 0:
                raise ValueError("skip must be >= 0")
            if fault.only is not None and fault.only not in FAULT_TARGETS:
                raise ValueError(f"only must be one of {', '.join(FAULT_TARGETS)}")
            if fault.empty_listing and (fault.status is not None or fault.only != "listing"):
                raise ValueError("empty_listing answers listing requests with 200: "
                                 "no status, and only 'listing'")
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        with state.lock:
            fault_seq += 1
            fault.rng = random.Random(f"{config.seed}:faults:{fault_seq}")
            state.fault = fault
        log.info("sim.faults_set", rate=fault.rate, status=fault.status,
                 latency_ms=fault.latency_ms, count=fault.count, skip=fault.skip,
                 paths=fault.paths, only=fault.only, empty_listing=fault.empty_listing)
        return JSONResponse({"ok": True})

    async def clear_faults(request: Request) -> Response:
        with state.lock:
            state.fault = None
        return JSONResponse({"ok": True})

    async def mutate(request: Request) -> Response:
        try:
            body = await _json(request)
            counts = {k: int(body.get(k) or 0) for k in ("changed", "added", "removed",
                                                         "out_of_stock")}
            if any(v < 0 for v in counts.values()):
                raise ValueError("counts must be >= 0")
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        result = state.mutate(**counts)
        log.info("sim.mutated", **counts)
        return JSONResponse(result)

    async def set_drift(request: Request) -> Response:
        try:
            body = await _json(request)
            after = int(body.get("after", 1))
            if after < 1:
                raise ValueError("after must be at least 1 (listing requests answered first)")
            raw_id = body.get("remove_id")
            remove_id = None if raw_id is None else int(str(raw_id))
            state.set_drift(after, remove_id)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except SimError as exc:
            return JSONResponse({"error": exc.message}, status_code=400)
        log.info("sim.drift_armed", after=after, remove_id=remove_id)
        return JSONResponse({"ok": True})

    async def clear_drift(request: Request) -> Response:
        with state.lock:
            state.drift = None
        return JSONResponse({"ok": True})

    async def stats(request: Request) -> Response:
        with state.lock:
            data = state.stats.as_dict()
            drift = state.drift
            data["drift"] = None if drift is None else {
                "after": drift.after, "listed": drift.listed, "applied": drift.applied}
            data["products"] = len(state.products)
            data["funds"] = _money(state.funds)
            data["webhooks_delivered"] = sender.delivered if sender else 0
        return JSONResponse(data)

    async def reset(request: Request) -> Response:
        with state.lock:
            state.stats = type(state.stats)()
        return JSONResponse({"ok": True})

    async def set_config(request: Request) -> Response:
        try:
            body = await _json(request)
            with state.lock:
                if body.get("rate_limit_per_min") is not None:
                    state.rate_limit = type(state.rate_limit)(int(body["rate_limit_per_min"]))
                if body.get("key_delay_s") is not None:
                    state.key_delay_s = float(body["key_delay_s"])
                if body.get("funds") is not None:
                    state.funds = to_cents(Decimal(str(body["funds"])))
        except (ValueError, TypeError, InvalidOperation) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if sender is not None:
            sender.start()
        try:
            yield
        finally:
            if sender is not None:
                sender.stop()

    app = Starlette(
        routes=[
            Route("/v1/products", products, methods=["GET"]),
            Route("/v1/order", create_order, methods=["POST"]),
            Route("/v1/order/pay/{order_id}", pay, methods=["PUT"]),
            Route("/v1/order/details/{order_id}", details, methods=["GET"]),
            Route("/v1/order/key/{order_id}", key, methods=["GET"]),
            Route("/_sim/faults", set_faults, methods=["POST"]),
            Route("/_sim/faults", clear_faults, methods=["DELETE"]),
            Route("/_sim/mutate", mutate, methods=["POST"]),
            Route("/_sim/drift", set_drift, methods=["POST"]),
            Route("/_sim/drift", clear_drift, methods=["DELETE"]),
            Route("/_sim/stats", stats, methods=["GET"]),
            Route("/_sim/reset", reset, methods=["POST"]),
            Route("/_sim/config", set_config, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.sim = state
    app.state.config = config
    app.state.webhooks = sender
    return app
