"""The one place that turns refusals into HTTP answers.

Every error body is `{"error": {"code", "message"}}`, never a stack trace. Services raise
`DomainError`s that know nothing of HTTP; `STATUS_BY_ERROR` gives each its status and
`HEADERS_BY_ERROR` any header it must carry. Lookups walk the class's MRO, so a subclass
takes its base's row unless it has one of its own (`tests/web/test_errors.py` checks that
every DomainError in `services` has a row more specific than `DomainError`'s).
"""

from __future__ import annotations

from typing import Any, TypeVar

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.accounts import errors as accounts
from services.cart import errors as cart
from services.errors import DomainError, Forbidden, InvalidInput, TryLater, Unauthorized
from services.games import errors as games
from services.orders import errors as orders
from services.webhooks import errors as webhooks

log = structlog.get_logger(__name__)

BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}

STATUS_BY_ERROR: dict[type[DomainError], int] = {
    DomainError: 400,
    InvalidInput: 422,
    Unauthorized: 401,
    Forbidden: 403,
    TryLater: 503,  # with Retry-After (see the handler)
    # accounts
    accounts.EmailTaken: 409,
    accounts.InvalidCredentials: 401,
    accounts.UserNotFound: 404,
    accounts.LoginRateLimited: 429,
    accounts.PasswordHashBusy: 503,
    # cart
    cart.InvalidSessionId: 422,
    # games
    games.GameNotFound: 404,
    games.GameUnavailable: 409,
    # orders
    orders.OrderError: 400,
    orders.EmptyOrder: 422,
    orders.InsufficientBalance: 402,
    orders.OrderNotFound: 404,
    orders.InvalidQuantity: 422,
    orders.InsufficientStock: 409,
    orders.PriceChanged: 409,
    # webhooks
    webhooks.WebhookRejected: 400,
    webhooks.MalformedWebhook: 400,
    webhooks.InvalidTimestamp: 400,
    webhooks.InvalidSignature: 401,
    webhooks.PayloadTooLarge: 413,
}

HEADERS_BY_ERROR: dict[type[DomainError], dict[str, str]] = {
    Unauthorized: BEARER_CHALLENGE,
    # orders
    # webhooks
}

_V = TypeVar("_V")


def _lookup(table: dict[type[DomainError], _V], error: type[DomainError]) -> _V | None:
    for cls in error.__mro__:
        if cls in table:
            return table[cls]
    return None


def status_of(error: type[DomainError]) -> int:
    return _lookup(STATUS_BY_ERROR, error) or 400


def headers_of(error: type[DomainError]) -> dict[str, str] | None:
    return _lookup(HEADERS_BY_ERROR, error)


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error answer (CONTRACT §5)."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for the error statuses a route may answer, all `ErrorBody`."""
    return {status: {"model": ErrorBody} for status in statuses}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None,
    details: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"code": code, "message": message}
    # Details only add fields; they never replace `code` or `message`.
    body.update({k: v for k, v in (details or {}).items() if k not in body})
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def database_unavailable() -> JSONResponse:
    return error_response(
        503,
        "database_unavailable",
        "The database is unreachable; retry shortly.",
        {"Retry-After": "5"},
    )


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _is_nul_in_text(exc: DBAPIError) -> bool:
    return isinstance(exc, DataError) and "cannot contain NUL (0x00)" in str(exc.orig)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
        kind = type(exc)
        headers = headers_of(kind)
        if isinstance(exc, TryLater):
            headers = {**(headers or {}), "Retry-After": str(exc.retry_after_s)}
        return error_response(
            status_of(kind), exc.code, exc.message, headers, exc.details()
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            exc.status_code, "http_error"
        )
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors: list[dict[str, Any]] = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        message = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        return JSONResponse(
            {"error": {"code": "invalid_request", "message": message, "details": errors}},
            status_code=422,
        )

    @app.exception_handler(DBAPIError)
    async def _db_error(_: Request, exc: DBAPIError) -> JSONResponse:
        if _is_connection_error(exc):
            log.warning("database unavailable", error=str(exc.orig))
            return database_unavailable()
        if _is_nul_in_text(exc):
            # Postgres text cannot hold NUL; only client input can carry one (an email, a
            # search term), so it is a bad request, not a server fault.
            return error_response(422, "invalid_request", "Text must not contain NUL (0x00).")
        log.exception("database error")
        return error_response(500, "internal_error", "Internal error.")

    @app.exception_handler(PoolTimeout)
    async def _pool_timeout(_: Request, exc: PoolTimeout) -> JSONResponse:
        return database_unavailable()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Internal error.")
