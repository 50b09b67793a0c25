"""The one error-to-HTTP mapping: every domain refusal has its status, the handler answers
the contract's error body, and the OpenAPI document declares every response body."""

from __future__ import annotations

import importlib
import pkgutil

from fastapi.testclient import TestClient

import services
from services.accounts.errors import InvalidToken
from services.errors import DomainError, Unauthorized
from web.errors import STATUS_BY_ERROR, headers_of, status_of


def _all_domain_errors() -> set[type[DomainError]]:
    for module in pkgutil.walk_packages(services.__path__, "services."):
        importlib.import_module(module.name)
    found: set[type[DomainError]] = set()
    pending: list[type[DomainError]] = [DomainError]
    while pending:
        for sub in pending.pop().__subclasses__():
            found.add(sub)
            pending.append(sub)
    return found


def test_every_domain_error_has_its_own_row_or_a_domain_base_with_one() -> None:
    errors = _all_domain_errors()
    assert len(errors) >= 10  # the walk really found the domains' errors
    for error in errors:
        row = next(cls for cls in error.__mro__ if cls in STATUS_BY_ERROR)
        assert row is not DomainError, f"{error.__module__}.{error.__qualname__} has no status row"


def test_no_http_status_leaks_into_services() -> None:
    for error in _all_domain_errors():
        assert not hasattr(error, "status"), error


def test_subclasses_take_their_bases_row_and_headers() -> None:
    assert status_of(InvalidToken) == status_of(Unauthorized) == 401
    assert headers_of(InvalidToken) == {"WWW-Authenticate": "Bearer"}


def test_a_refusal_answers_its_status_code_message_and_headers(client: TestClient) -> None:
    response = client.get("/cart", headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {
        "error": {"code": "unauthorized", "message": "Invalid or expired token."}
    }


def test_openapi_declares_a_body_for_every_answer(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operations = [(path, method, op) for path, ops in spec["paths"].items()
                  for method, op in ops.items()]
    assert len(operations) >= 16
    for path, method, op in operations:
        for status, response in op["responses"].items():
            content = response.get("content")
            assert content, f"{method.upper()} {path} {status} documents no body"
            if path == "/metrics":
                assert list(content) == ["text/plain"]
                continue
            schema = content["application/json"]["schema"]
            assert "$ref" in schema, f"{method.upper()} {path} {status}: {schema}"
            if status.startswith(("4", "5")) and path != "/readyz":
                assert schema["$ref"].endswith("/ErrorBody"), (method, path, status, schema)
