"""Schemathesis against the app's own OpenAPI: anonymous, as a guest and as a signed-in
user, valid and invalid inputs. No 5xx, no stack trace, and a rejected request stores
nothing; every answer is one the schema documents (status, content type, headers, body).
With Postgres unreachable: 503 + Retry-After, never a 500."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import text

from keysync.resources import Resources
from services.accounts import tokens
from tests.conftest import TABLES
from tests.faults.support import Figures
from tests.order_helpers import make_game
from web.app import create_app

MAX_EXAMPLES = 10
# Every answer must be documented: its status, content type, headers and body shape.
CONFORMANCE = [status_code_conformance, content_type_conformance,
               response_headers_conformance, response_schema_conformance]
LEAKS = ("Traceback", 'File "', "sqlalchemy", "psycopg", "Exception", "/work/", ".py\"")
_COUNTS = text("SELECT " + ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in TABLES))


def _counts(resources: Resources) -> dict[str, int]:
    with resources.engine.connect() as conn:
        return dict(conn.execute(_COUNTS).mappings().one())


def _fuzz(app: Any, headers: dict[str, str], check: Callable[[Any, Any], None],
          figures: Figures, modes: tuple[GenerationMode, ...]) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in modes:
            strategy = operation.as_strategy(generation_mode=mode, headers=headers or None)

            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                      derandomize=True, suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def run(case: Any) -> None:
                response = case.call()
                figures.requests += 1
                check(case, response)

            try:
                run()
            except Unsatisfiable:
                # No parameters or body to make invalid (e.g. GET /healthz).
                assert mode is GenerationMode.NEGATIVE


def _assert_clean(case: Any, response: Any) -> None:
    body = response.text
    for leak in LEAKS:
        assert leak not in body, (case.method, case.formatted_path, response.status_code, body)
    if response.status_code >= 400 and case.formatted_path not in ("/metrics", "/readyz"):
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)


def conforming_check(resources: Resources, statuses: dict[int, int],
                     also: Callable[[Any, Any], None] | None = None
                     ) -> Callable[[Any, Any], None]:
    """The check every fuzzed answer passes: counted in `statuses`, never a 5xx, valid
    against the schema, no trace or secret in it, `also` (a suite's own rule), and nothing
    stored by a refused request."""
    before = {"counts": _counts(resources)}

    def check(case: Any, response: Any) -> None:
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (case.method, case.formatted_path, case.body,
                                            response.text)
        case.validate_response(response, checks=[not_a_server_error, *CONFORMANCE])
        _assert_clean(case, response)
        if also is not None:
            also(case, response)
        if 400 <= response.status_code < 500:
            assert _counts(resources) == before["counts"], (case.method, case.formatted_path)
        before["counts"] = _counts(resources)

    return check


@pytest.mark.slow
@pytest.mark.parametrize("who", ["anonymous", "guest", "user"])
def test_no_5xx_no_trace_nothing_stored_on_rejection(
    who: str, resources: Resources, figures: Figures,
) -> None:
    app = create_app(resources)
    make_game(resources.sessions)  # something real to find now and then
    headers: dict[str, str] = {}
    if who == "guest":
        headers = {"X-Session-Id": "fuzz-guest-0123456789abcdef"}
    elif who == "user":
        from fastapi.testclient import TestClient

        token = TestClient(app).post("/auth/register", json={
            "email": "fuzz@example.com", "password": "password1"}).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
    statuses: dict[int, int] = {}
    check = conforming_check(resources, statuses)
    _fuzz(app, headers, check, figures, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE))
    figures.notes["statuses"] = dict(sorted(statuses.items()))
    assert any(200 <= s < 300 for s in statuses) and any(400 <= s < 500 for s in statuses)


def test_postgres_down_is_503_never_500(settings: Any, broker: Any, figures: Figures) -> None:
    from keysync.embedded import free_port

    dead = settings.model_copy(update={
        "database_url": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"})
    resources = Resources.build(dead, broker)
    figures.faults += 1
    statuses: dict[int, int] = {}

    def check(case: Any, response: Any) -> None:
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500 or response.status_code == 503, (
            case.method, case.formatted_path, response.text)
        if response.status_code == 503 and case.formatted_path not in ("/readyz",):
            assert response.headers.get("retry-after")
        case.validate_response(response, checks=CONFORMANCE)
        _assert_clean(case, response)

    try:
        token = tokens.issue(uuid.uuid4(), settings.jwt_secret.get_secret_value(), 600)
        _fuzz(create_app(resources), {"Authorization": f"Bearer {token}"}, check, figures,
              (GenerationMode.POSITIVE,))
    finally:
        resources.close()
    figures.notes["statuses"] = dict(sorted(statuses.items()))
    assert 503 in statuses
