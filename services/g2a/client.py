"""Client for the real G2A Export API (`/v1/products`, `/v1/order*`).

One retry policy for every call (tenacity, exponential backoff with full jitter, Retry-After
honoured), a shared Redis token bucket so the account's rate limit is never exceeded by us,
and typed errors. Responses are parsed strictly: a malformed answer is an error, never a
guess.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import redis
import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_random_exponential

from services.g2a.counts import RequestCounts
from services.g2a.errors import (
    G2AProtocolError,
    G2ARateLimited,
    G2AUnavailable,
    error_for,
    retry_after_seconds,
)
from services.g2a.models import (
    G2A_DATETIME_FORMAT,
    AnswerT,
    CreatedOrder,
    G2AProduct,
    KeyAnswer,
    OrderDetails,
    Payment,
    ProductPage,
    parse_answer,
)
from services.g2a.rate_limit import RateLimiter
from services.metrics import G2A_RATE_LIMITED, G2A_REQUEST_SECONDS, G2A_REQUESTS

if TYPE_CHECKING:
    from keysync.settings import Settings

log = structlog.get_logger("keysync.g2a")

DEFAULT_TIMEOUT_S = 10.0
# How long one call may wait for a shared rate-limit token before counting as rate limited.
RATE_LIMIT_WAIT_S = 60.0


def auth_header(api_hash: str, email: str, api_secret: str) -> str:
    """The Export API's `Authorization` value: `{hash}, {sha256_hex(hash + email + secret)}`."""
    digest = hashlib.sha256(f"{api_hash}{email}{api_secret}".encode()).hexdigest()
    return f"{api_hash}, {digest}"


class _UnparseableBody(G2AProtocolError):
    """A success status with a body that is not JSON: plausibly a truncated or proxied
    answer, so an idempotent call may try again."""


class G2AClient:
    def __init__(
        self,
        http: httpx.Client,
        *,
        email: str,
        api_hash: str,
        api_secret: str,
        rate_limiter: RateLimiter | None = None,
        max_attempts: int = 5,
        max_wait_s: float = 30.0,
        base_wait_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._http = http
        self._authorization = auth_header(api_hash, email, api_secret)
        self._limiter = rate_limiter
        self._max_attempts = max_attempts
        self._max_wait_s = max_wait_s
        self._backoff = wait_random_exponential(multiplier=base_wait_s, max=max_wait_s)
        self._sleep = sleep
        self.requests_made = 0
        self._retries = 0
        self._faults: Counter[str] = Counter()
        # Listing pages are fetched from several threads at once; keep the count exact.
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:
        # The default repr is harmless, but spelling it out keeps credentials out for good.
        return f"G2AClient(base_url={str(self._http.base_url)!r})"

    # -- public calls -----------------------------------------------------------------

    def list_products(
        self,
        *,
        page: int = 1,
        include_out_of_stock: bool = True,
        min_qty: int | None = None,
        updated_at_from: datetime | None = None,
        updated_at_to: datetime | None = None,
        min_price_from: Decimal | None = None,
        min_price_to: Decimal | None = None,
        product_id: str | None = None,
    ) -> ProductPage:
        # Always explicit: G2A's default hides out-of-stock products, ours shows them.
        params: dict[str, str] = {
            "page": str(page),
            "includeOutOfStock": "true" if include_out_of_stock else "false",
        }
        if min_qty is not None:
            params["minQty"] = str(min_qty)
        if updated_at_from is not None:
            params["updatedAtFrom"] = _format_datetime(updated_at_from)
        if updated_at_to is not None:
            params["updatedAtTo"] = _format_datetime(updated_at_to)
        if min_price_from is not None:
            params["minPriceFrom"] = _format_price(min_price_from)
        if min_price_to is not None:
            params["minPriceTo"] = _format_price(min_price_to)
        if product_id is not None:
            params["id"] = product_id
        data = self._call("GET", "/v1/products", "/v1/products", params=params)
        return parse_answer(ProductPage, data, "/v1/products")

    def get_product(self, product_id: str) -> G2AProduct | None:
        """One product by id (`GET /v1/products?id=`), out of stock included; None when
        G2A no longer lists it.

        G2A answers a normal listing page filtered to that id, so absence is exactly an
        empty page with `total` 0. Anything else without the product (other docs, a
        non-zero total) means the filter was not applied as we asked: that is an error,
        never "absent", because callers deactivate products on absence.
        """
        if not product_id or not product_id.strip():
            raise ValueError("product_id must be a non-empty G2A product id")
        page = self.list_products(page=1, include_out_of_stock=True, product_id=product_id)
        for product in page.products:
            if product.id == product_id:
                return product
        if page.products or page.total != 0:
            raise G2AProtocolError(
                "SHAPE",
                f"look-up of product {product_id} answered {len(page.products)} other "
                f"products (total {page.total})",
            )
        return None

    def create_order(
        self, product_id: str, *, max_price: Decimal, currency: str = "EUR"
    ) -> CreatedOrder:
        # Not idempotent: a POST retried after a timeout may create a second order. Unpaid
        # G2A orders cost nothing, but an orphan is still confusing to reconcile, so this
        # call is retried only when the request certainly never reached G2A (connect
        # failure, or a 429 that refused it).
        body = {
            "product_id": product_id,
            "currency": currency,
            "max_price": float(max_price.quantize(Decimal("0.01"))),
        }
        data = self._call("POST", "/v1/order", "/v1/order", json_body=body, idempotent=False)
        return parse_answer(CreatedOrder, data, "/v1/order")

    def pay_order(self, order_id: str) -> Payment:
        # PUT is idempotent: paying a paid order answers the same transaction, not a second
        # charge, so retrying after a timeout is safe.
        return self._order_call("PUT", "/v1/order/pay/{order_id}", order_id, Payment)

    def order_details(self, order_id: str) -> OrderDetails:
        return self._order_call("GET", "/v1/order/details/{order_id}", order_id, OrderDetails)

    def get_key(self, order_id: str) -> str:
        # G2A hands a key out once. A retry after a lost answer therefore ends in ORD04
        # (G2AKeyAlreadyDownloaded), exactly as a later manual retry would; retrying still
        # wins whenever the first attempt never reached G2A.
        return self._order_call("GET", "/v1/order/key/{order_id}", order_id, KeyAnswer).key

    def _order_call(self, method: str, endpoint: str, order_id: str,
                    answer: type[AnswerT]) -> AnswerT:
        """A call on one G2A order: `endpoint` is the path template (and the metrics label)."""
        path = endpoint.format(order_id=quote(order_id, safe=""))
        data = self._call(method, path, endpoint, order_id=order_id)
        return parse_answer(answer, data, endpoint)

    def counts(self) -> RequestCounts:
        """A snapshot of this client's request figures (for a run's summary line)."""
        with self._count_lock:
            return RequestCounts(self.requests_made, self._retries, dict(self._faults))

    # -- transport --------------------------------------------------------------------

    def _count_fault(self, status: int | str) -> None:
        with self._count_lock:
            self._faults[str(status)] += 1

    def _count_request(self, endpoint: str, status: int | str, started: float) -> None:
        """Count a request that reached G2A (or may have) in this client and in metrics."""
        with self._count_lock:
            self.requests_made += 1
            if not isinstance(status, int) or status >= 400:
                self._faults[str(status)] += 1
        G2A_REQUESTS.labels(endpoint, str(status)).inc()
        G2A_REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
        if status == 429:
            G2A_RATE_LIMITED.labels(endpoint).inc()

    def _call(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        idempotent: bool = True,
        order_id: str | None = None,
    ) -> dict[str, Any]:
        retrying = Retrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            retry=retry_if_exception(lambda exc: _retryable(exc, idempotent)),
            sleep=self._sleep,
            reraise=True,
        )
        content = json.dumps(json_body).encode() if json_body is not None else None
        result: dict[str, Any] = {}
        for attempt in retrying:
            if attempt.retry_state.attempt_number > 1:
                with self._count_lock:
                    self._retries += 1
            with attempt:
                result = self._attempt(
                    method,
                    path,
                    endpoint,
                    params=params,
                    content=content,
                    attempt=attempt.retry_state.attempt_number,
                    order_id=order_id,
                )
        return result

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, G2ARateLimited) and exc.retry_after is not None:
            # Jitter on top of Retry-After so several workers told the same time do not
            # come back in the same instant and trip the limit again.
            return float(min(exc.retry_after * random.uniform(1.0, 1.1), self._max_wait_s))
        return float(self._backoff(state))

    def _attempt(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        params: Mapping[str, str] | None,
        content: bytes | None,
        attempt: int,
        order_id: str | None,
    ) -> dict[str, Any]:
        if self._limiter is not None:
            try:
                self._limiter.acquire(timeout_s=RATE_LIMIT_WAIT_S)
            except redis.RedisError as exc:
                # The shared bucket lives in Redis; without it we still talk to G2A (its
                # own 429s are retried with backoff) rather than stop selling keys.
                log.warning("g2a rate limiter unavailable; proceeding unthrottled",
                            error=str(exc))
        headers = {"Authorization": self._authorization, "Accept": "application/json"}
        if content is not None:
            headers["Content-Type"] = "application/json"
        bound = log.bind(method=method, endpoint=endpoint, attempt=attempt)
        if order_id is not None:
            bound = bound.bind(order_id=order_id)
        started = time.perf_counter()
        try:
            response = self._http.request(
                method, path, params=params, content=content, headers=headers
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            G2A_REQUESTS.labels(endpoint, "unreachable").inc()
            self._count_fault("unreachable")
            bound.debug("g2a.request_failed", error=type(exc).__name__, sent=False)
            raise G2AUnavailable(
                "CONNECT", f"{type(exc).__name__}: {exc}", None, request_sent=False
            ) from exc
        except httpx.TimeoutException as exc:
            self._count_request(endpoint, "timeout", started)
            bound.debug("g2a.request_failed", error=type(exc).__name__, sent=True)
            raise G2AUnavailable("TIMEOUT", f"{type(exc).__name__}: {exc}", None) from exc
        except httpx.TransportError as exc:
            self._count_request(endpoint, "error", started)
            bound.debug("g2a.request_failed", error=type(exc).__name__, sent=True)
            raise G2AUnavailable("NETWORK", f"{type(exc).__name__}: {exc}", None) from exc
        self._count_request(endpoint, response.status_code, started)
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        status = response.status_code
        try:
            data: Any = json.loads(response.content, parse_float=Decimal)
        except ValueError:
            data = None
        if status >= 400 or (isinstance(data, dict) and data.get("status") == "ERROR"):
            code = data.get("code") if isinstance(data, dict) else None
            message = data.get("message") if isinstance(data, dict) else None
            error = error_for(
                code if isinstance(code, str) and code else None,
                message if isinstance(message, str) else f"HTTP {status} {response.reason_phrase}",
                status,
                retry_after_seconds(response.headers.get("Retry-After")),
            )
            bound.debug(
                "g2a.request", status=status, latency_ms=latency_ms, error_code=error.code
            )
            raise error
        bound.debug("g2a.request", status=status, latency_ms=latency_ms)
        if data is None:
            raise _UnparseableBody("MALFORMED", f"{endpoint} answered {status} with non-JSON")
        if not isinstance(data, dict):
            raise G2AProtocolError("SHAPE", f"{endpoint} answered a non-object")
        return data


def make_http(settings: Settings) -> httpx.Client:
    """The pooled HTTP client to G2A_API_URL: 10 s timeouts (5 s to connect). One per process."""
    settings.require("g2a_api_url")
    return httpx.Client(
        base_url=settings.g2a_api_url,
        timeout=httpx.Timeout(DEFAULT_TIMEOUT_S, connect=5.0),
        headers={"User-Agent": "keysync"},
        limits=httpx.Limits(max_connections=20),
    )


def make_client(settings: Settings, http: httpx.Client, redis: redis.Redis | None) -> G2AClient:
    """The production client over a shared `http` (see `make_http`): G2A_* settings and the
    shared rate limit when a Redis is given (without one, only retries on 429 protect it).
    Cheap to build per job, so each run gets its own `requests_made` count."""
    settings.require("g2a_api_url", "g2a_email", "g2a_api_hash", "g2a_api_secret")
    limiter = RateLimiter(redis, settings.g2a_rate_limit_per_min) if redis is not None else None
    return G2AClient(
        http,
        email=settings.g2a_email,
        api_hash=settings.g2a_api_hash.get_secret_value(),
        api_secret=settings.g2a_api_secret.get_secret_value(),
        rate_limiter=limiter,
    )


# -- helpers ------------------------------------------------------------------------------


def _retryable(exc: BaseException, idempotent: bool) -> bool:
    if isinstance(exc, G2ARateLimited):
        return True  # refused before any effect, whatever the method
    if isinstance(exc, G2AUnavailable):
        return idempotent or not exc.request_sent
    if isinstance(exc, _UnparseableBody):
        return idempotent
    return False


def _format_datetime(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("datetimes sent to G2A must be timezone-aware")
    return value.astimezone(UTC).strftime(G2A_DATETIME_FORMAT)


def _format_price(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01")))


__all__ = [
    "G2AClient",
    "RequestCounts",
    "auth_header",
    "make_client",
    "make_http",
]
