"""Client for the real G2A Export API (`/v1/products`, `/v1/order*`).

One retry policy for every call (tenacity, exponential backoff with full jitter, Retry-After
honoured), a shared Redis token bucket so the account's rate limit is never exceeded by us,
and typed errors. Responses are parsed strictly: a malformed answer is an error, never a
guess.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import redis
import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_random_exponential

from services.g2a.errors import (
    G2AError,
    G2AProtocolError,
    G2ARateLimited,
    G2AUnavailable,
    error_for,
)
from services.g2a.rate_limit import RateLimiter
from services.metrics import G2A_RATE_LIMITED, G2A_REQUEST_SECONDS, G2A_REQUESTS

if TYPE_CHECKING:
    from keysync.settings import Settings

log = structlog.get_logger("keysync.g2a")

G2A_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DEFAULT_TIMEOUT_S = 10.0
# How long one call may wait for a shared rate-limit token before counting as rate limited.
RATE_LIMIT_WAIT_S = 60.0


def auth_header(api_hash: str, email: str, api_secret: str) -> str:
    """The Export API's `Authorization` value: `{hash}, {sha256_hex(hash + email + secret)}`."""
    digest = hashlib.sha256(f"{api_hash}{email}{api_secret}".encode()).hexdigest()
    return f"{api_hash}, {digest}"


@dataclass(frozen=True, slots=True)
class G2AProduct:
    id: str
    name: str
    slug: str
    qty: int
    min_price: Decimal | None
    retail_min_price: Decimal | None
    updated_at: datetime | None
    platform: str | None
    region: str | None
    image_url: str | None

    @property
    def g2a_price(self) -> Decimal | None:
        """What we pay G2A: the retail price, else the marketplace minimum."""
        return self.retail_min_price if self.retail_min_price is not None else self.min_price


@dataclass(frozen=True, slots=True)
class ProductPage:
    total: int
    page: int
    products: list[G2AProduct]


@dataclass(frozen=True, slots=True)
class CreatedOrder:
    order_id: str
    price: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class Payment:
    transaction_id: str


@dataclass(frozen=True, slots=True)
class OrderDetails:
    status: str
    price: Decimal
    currency: str


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
        docs = data.get("docs")
        if not isinstance(docs, list):
            raise G2AProtocolError("SHAPE", "products answer has no docs list")
        return ProductPage(
            total=_int(data, "total"),
            page=_int(data, "page"),
            products=[_product(doc) for doc in docs],
        )

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
        return CreatedOrder(
            order_id=_str(data, "order_id"),
            price=_required_decimal(data, "price"),
            currency=_str(data, "currency"),
        )

    def pay_order(self, order_id: str) -> Payment:
        # PUT is idempotent: paying a paid order answers the same transaction, not a second
        # charge, so retrying after a timeout is safe.
        data = self._call(
            "PUT",
            f"/v1/order/pay/{quote(order_id, safe='')}",
            "/v1/order/pay/{order_id}",
            order_id=order_id,
        )
        if data.get("status") is not True:
            raise G2AProtocolError("SHAPE", "payment answer without status true")
        return Payment(transaction_id=_str(data, "transaction_id"))

    def order_details(self, order_id: str) -> OrderDetails:
        data = self._call(
            "GET",
            f"/v1/order/details/{quote(order_id, safe='')}",
            "/v1/order/details/{order_id}",
            order_id=order_id,
        )
        return OrderDetails(
            status=_str(data, "status"),
            price=_required_decimal(data, "price"),
            currency=_str(data, "currency"),
        )

    def get_key(self, order_id: str) -> str:
        # G2A hands a key out once. A retry after a lost answer therefore ends in ORD04
        # (G2AKeyAlreadyDownloaded), exactly as a later manual retry would; retrying still
        # wins whenever the first attempt never reached G2A.
        data = self._call(
            "GET",
            f"/v1/order/key/{quote(order_id, safe='')}",
            "/v1/order/key/{order_id}",
            order_id=order_id,
        )
        key = data.get("key")
        if not isinstance(key, str) or not key:
            raise G2AProtocolError("SHAPE", "key answer without a key")
        return key

    # -- transport --------------------------------------------------------------------

    def _count_request(self, endpoint: str, status: int | str, started: float) -> None:
        """Count a request that reached G2A (or may have) in this client and in metrics."""
        with self._count_lock:
            self.requests_made += 1
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
            bound.warning("g2a.request_failed", error=type(exc).__name__, sent=False)
            raise G2AUnavailable(
                "CONNECT", f"{type(exc).__name__}: {exc}", None, request_sent=False
            ) from exc
        except httpx.TimeoutException as exc:
            self._count_request(endpoint, "timeout", started)
            bound.warning("g2a.request_failed", error=type(exc).__name__, sent=True)
            raise G2AUnavailable("TIMEOUT", f"{type(exc).__name__}: {exc}", None) from exc
        except httpx.TransportError as exc:
            self._count_request(endpoint, "error", started)
            bound.warning("g2a.request_failed", error=type(exc).__name__, sent=True)
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
                _retry_after(response.headers.get("Retry-After")),
            )
            bound.warning(
                "g2a.request", status=status, latency_ms=latency_ms, error_code=error.code
            )
            raise error
        bound.info("g2a.request", status=status, latency_ms=latency_ms)
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


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _format_datetime(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("datetimes sent to G2A must be timezone-aware")
    return value.astimezone(UTC).strftime(G2A_DATETIME_FORMAT)


def _format_price(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01")))


def _str(data: Mapping[str, Any], field: str) -> str:
    value = data.get(field)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise G2AProtocolError("SHAPE", f"field {field!r} missing or not a string")
    return str(value)


def _optional_str(data: Mapping[str, Any], field: str) -> str | None:
    value = data.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise G2AProtocolError("SHAPE", f"field {field!r} is not a string")
    return value


def _int(data: Mapping[str, Any], field: str) -> int:
    value = data.get(field)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    raise G2AProtocolError("SHAPE", f"field {field!r} missing or not an integer")


def _decimal(data: Mapping[str, Any], field: str) -> Decimal | None:
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool):
        raise G2AProtocolError("SHAPE", f"field {field!r} is not a number")
    try:
        result = Decimal(value) if isinstance(value, Decimal | int | str) else None
    except InvalidOperation:
        result = None
    if result is None or not result.is_finite() or result < 0:
        raise G2AProtocolError("SHAPE", f"field {field!r} is not a price")
    return result


def _required_decimal(data: Mapping[str, Any], field: str) -> Decimal:
    value = _decimal(data, field)
    if value is None:
        raise G2AProtocolError("SHAPE", f"field {field!r} missing")
    return value


def _datetime(data: Mapping[str, Any], field: str) -> datetime | None:
    value = _optional_str(data, field)
    if value is None:
        return None
    try:
        return datetime.strptime(value, G2A_DATETIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise G2AProtocolError("SHAPE", f"field {field!r} is not yyyy-mm-dd hh:mm:ss") from exc


def _product(doc: object) -> G2AProduct:
    if not isinstance(doc, dict):
        raise G2AProtocolError("SHAPE", "product doc is not an object")
    return G2AProduct(
        id=_str(doc, "id"),
        name=_str(doc, "name"),
        slug=_str(doc, "slug"),
        qty=_int(doc, "qty"),
        min_price=_decimal(doc, "minPrice"),
        retail_min_price=_decimal(doc, "retail_min_price"),
        updated_at=_datetime(doc, "updated_at"),
        platform=_optional_str(doc, "platform"),
        region=_optional_str(doc, "region"),
        image_url=(
            _optional_str(doc, "coverImage")
            or _optional_str(doc, "smallImage")
            or _optional_str(doc, "thumbnail")
        ),
    )


__all__ = [
    "CreatedOrder",
    "G2AClient",
    "G2AError",
    "G2AProduct",
    "OrderDetails",
    "Payment",
    "ProductPage",
    "auth_header",
    "make_client",
    "make_http",
]
