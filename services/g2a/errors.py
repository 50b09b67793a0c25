"""Typed G2A Export API errors.

Callers decide what to do from the class (retry later, fail the order, alert an operator);
`code` keeps G2A's own code for logs and for the cases the class does not distinguish.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime


class G2AError(Exception):
    """Any error answered by (or on the way to) the G2A Export API."""

    def __init__(self, code: str, message: str, http_status: int | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (HTTP {http_status})" if http_status else ""))
        self.code = code
        self.message = message
        self.http_status = http_status


class G2ARateLimited(G2AError):
    """BR03 / HTTP 429. `retry_after` is the server's Retry-After in seconds, when sent."""

    def __init__(
        self,
        code: str,
        message: str,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(code, message, http_status)
        self.retry_after = retry_after


class G2AAuthError(G2AError):
    """AUTH02 / 401: credentials wrong or missing; retrying cannot help."""


class G2ABadRequest(G2AError):
    """BR01 / 400, and any other 400 whose code is not mapped to a narrower class."""


class G2AOrderNotFound(G2AError):
    """ORD02 / 404."""


class G2APaymentNotReady(G2AError):
    """ORD03: the order is not paid yet, or its key is not ready; poll again later."""


class G2AKeyAlreadyDownloaded(G2AError):
    """ORD04: the key was handed out before (possibly in a response that was lost)."""


class G2AInsufficientFunds(G2AError):
    """ORD112 / 403: the G2A account balance cannot cover the order."""


class G2AUnavailable(G2AError):
    """5xx, timeouts or connection errors, after retries were exhausted (or not allowed).

    `request_sent` is False only when the request certainly never reached G2A (connect
    failure), which is what makes retrying a non-idempotent call safe.
    """

    def __init__(
        self,
        code: str,
        message: str,
        http_status: int | None = None,
        *,
        request_sent: bool = True,
    ) -> None:
        super().__init__(code, message, http_status)
        self.request_sent = request_sent


class G2AProtocolError(G2AError):
    """The answer was not JSON, or not the shape the Export API documents."""


_BY_CODE: dict[str, type[G2AError]] = {
    "BR03": G2ARateLimited,
    "AUTH02": G2AAuthError,
    "BR01": G2ABadRequest,
    "ORD02": G2AOrderNotFound,
    "ORD03": G2APaymentNotReady,
    "ORD04": G2AKeyAlreadyDownloaded,
    "ORD112": G2AInsufficientFunds,
}

_BY_STATUS: dict[int, type[G2AError]] = {
    400: G2ABadRequest,
    401: G2AAuthError,
    404: G2AOrderNotFound,
    429: G2ARateLimited,
}


def error_for(
    code: str | None, message: str, http_status: int, retry_after: float | None = None
) -> G2AError:
    """Build the typed error: the body's `code` decides first, the HTTP status second."""
    cls: type[G2AError] | None = _BY_CODE.get(code) if code else None
    if cls is None:
        cls = G2AUnavailable if http_status >= 500 else _BY_STATUS.get(http_status, G2AError)
    final_code = code or f"HTTP{http_status}"
    if cls is G2ARateLimited:
        return G2ARateLimited(final_code, message, http_status, retry_after=retry_after)
    return cls(final_code, message, http_status)


def retry_after_seconds(value: str | None) -> float | None:
    """A `Retry-After` header (seconds, or an HTTP date) as seconds from now; None if absent
    or unreadable."""
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
