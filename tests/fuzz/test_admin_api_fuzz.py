"""Schemathesis over the console's JSON twins (`/admin/api/*`) as an admin, a signed-in
non-admin and nobody: valid and invalid inputs, never a 5xx or a trace, every answer the
one the schema documents; the non-admin is always 403, nobody always 401, and neither
changes anything.

The app under test serves the twins' router alone, with the app's error handlers and
resources (so the schema is theirs only and every example lands on a twin)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from schemathesis import GenerationMode

from keysync.resources import Resources
from tests.faults.support import Figures
from tests.fuzz.test_api_fuzz import _fuzz, conforming_check
from tests.order_flows import place_order
from tests.order_helpers import make_game, make_user
from tests.web.admin.api_helpers import bearer, make_admin
from web.admin import api
from web.errors import install_error_handlers

EXPECTED = {"admin": None, "user": 403, "anonymous": 401}


def twins_app(resources: Resources) -> FastAPI:
    app = FastAPI(title="keysync console API")
    app.state.resources = resources
    install_error_handlers(app)
    app.include_router(api.router)
    return app


@pytest.mark.slow
@pytest.mark.parametrize("who", list(EXPECTED))
def test_admin_api_conforms_and_refuses_non_admins(
    who: str, resources: Resources, figures: Figures,
) -> None:
    game = make_game(resources.sessions)
    place_order(resources, [(game, 1)])  # an order to list and to find now and then
    headers: dict[str, str] = {}
    if who == "admin":
        headers = bearer(resources, make_admin(resources)[0])
    elif who == "user":
        headers = bearer(resources, make_user(resources.sessions))
    statuses: dict[int, int] = {}

    def identity_first(case: Any, response: Any) -> None:
        expected = EXPECTED[who]
        if expected is not None:
            # Identity is decided before any query or path input; only a body that does not
            # parse as JSON is refused before it (400/422). Never an answer, never a change.
            allowed = {expected} if case.method == "GET" else {expected, 400, 422}
            assert response.status_code in allowed, (
                case.method, case.formatted_path, response.text)

    check = conforming_check(resources, statuses, identity_first)
    _fuzz(twins_app(resources), headers, check, figures,
          (GenerationMode.POSITIVE, GenerationMode.NEGATIVE))
    figures.notes["statuses"] = dict(sorted(statuses.items()))
    assert sum(statuses.values()) >= 11 * 2  # every twin, both modes
    if who == "admin":
        assert any(200 <= s < 300 for s in statuses) and 422 in statuses
