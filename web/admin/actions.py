"""The console's state-changing forms: retry or discard dead letters, replay webhook events.

Each POST needs the session's CSRF token (`CheckedAdminDep`: 403 before anything runs
without it) and calls the same `services.ops` function as the CLI with the admin's email
as actor, so each writes its one `admin_actions` row. The answer is a redirect back to the
list (post/redirect/get) carrying what happened as a fixed message code and a count: the
message text itself is never taken from the URL.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from services.ops import jobs, webhook_inbox
from services.ops.errors import OpsInputError
from web.admin.session import CheckedAdminDep, ConsoleRoute
from web.deps import ResourcesDep

router = APIRouter(route_class=ConsoleRoute)

MESSAGES = {
    "retried": ("{n} dead job(s) re-enqueued.", "ok"),
    "discarded": ("{n} dead job(s) discarded.", "ok"),
    "replayed": ("{n} webhook event(s) reset and queued for processing.", "ok"),
    "unknown": ("Nothing done: the selection is no longer there (someone acted first?).", "bad"),
    "confirm": ("Nothing done: tick the box to confirm an action on all of them.", "bad"),
}

IdField = Annotated[list[str], Form(max_length=200)]


def flash(request: Request) -> dict[str, Any]:
    """The message of the action that redirected here (from its fixed code), if any."""
    code = request.query_params.get("done", "")
    if code not in MESSAGES:
        return {}
    text, kind = MESSAGES[code]
    count = request.query_params.get("n", "0")
    return {"flash": text.format(n=int(count) if count.isdigit() else 0), "flash_kind": kind}


def _back(path: str, done: str, n: int = 0, **params: str) -> RedirectResponse:
    query = urlencode({**{k: v for k, v in params.items() if v}, "done": done, "n": n})
    return RedirectResponse(f"/admin/{path}?{query}", status_code=303)


def _selection(ids: list[str], all_: str, confirm: str) -> tuple[list[str], bool] | None:
    """(ids, all) to act on; None when "all" lacks its confirmation."""
    if all_:
        return ([], True) if confirm == "yes" else None
    return ids, False


@router.post("/jobs/retry")
def retry_jobs(admin: CheckedAdminDep, resources: ResourcesDep, id: IdField = [],  # noqa: B006
               all: Annotated[str, Form()] = "", actor: Annotated[str, Form()] = "",
               confirm: Annotated[str, Form()] = "") -> Response:
    return _repair(jobs.retry, "retried", admin.email, resources, id, all, actor, confirm)


@router.post("/jobs/discard")
def discard_jobs(admin: CheckedAdminDep, resources: ResourcesDep, id: IdField = [],  # noqa: B006
                 all: Annotated[str, Form()] = "", actor: Annotated[str, Form()] = "",
                 confirm: Annotated[str, Form()] = "") -> Response:
    return _repair(jobs.discard, "discarded", admin.email, resources, id, all, actor, confirm)


def _repair(operation: Any, done: str, admin: str, resources: ResourcesDep, ids: list[str],
            all_: str, actor: str, confirm: str) -> Response:
    actor = actor.strip()
    chosen = _selection(ids, all_, confirm)
    if chosen is None:
        return _back("jobs", "confirm", state="dead", actor=actor)
    try:
        result = operation(resources.sessions, resources.broker.client, actor=admin,
                           ids=chosen[0], all_=chosen[1], actor_filter=actor or None)
    except OpsInputError:  # unknown ids included
        return _back("jobs", "unknown", state="dead", actor=actor)
    count = result.retried if done == "retried" else result.discarded
    return _back("jobs", done, count, state="dead", actor=actor)


@router.post("/webhooks/replay")
def replay_webhooks(admin: CheckedAdminDep, resources: ResourcesDep,
                    id: IdField = [],  # noqa: B006
                    dead: Annotated[str, Form()] = "",
                    confirm: Annotated[str, Form()] = "") -> Response:
    chosen = _selection(id, dead, confirm)
    outcome = "dead" if dead else ""
    if chosen is None:
        return _back("webhooks", "confirm", outcome=outcome)
    try:
        result = webhook_inbox.replay(resources.sessions, resources.broker, actor=admin.email,
                                      event_ids=chosen[0], dead=chosen[1])
    except OpsInputError:  # unknown ids included
        return _back("webhooks", "unknown", outcome=outcome)
    return _back("webhooks", "replayed", result.replayed, outcome=outcome)
