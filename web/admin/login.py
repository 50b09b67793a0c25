"""`/admin/login` and `/admin/logout`: the console's sign-in.

Sign-in is `services.accounts.auth.authenticate`, the API login's own check with the same
per-address and per-email limits and hashing slots (429 / 503 pages with `Retry-After`),
then the admin gate: a valid user who is not an admin gets 403 and no session.
"""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from services.accounts.auth import LoginRateLimited, authenticate
from services.errors import DomainError, Forbidden, TryLater
from services.ops.admins import require_admin
from web.admin import render
from web.admin.session import (
    CheckedAdminDep,
    ConsoleRoute,
    clear_session,
    keep_login_csrf,
    login_csrf,
    login_csrf_ok,
    safe_next,
    set_session,
)
from web.deps import ClientAddressDep, LoginLimitsDep, ResourcesDep

log = structlog.get_logger(__name__)

router = APIRouter(route_class=ConsoleRoute)


def _form(request: Request, *, next_: str, email: str = "", error: str | None = None,
          status_code: int = 200) -> Response:
    csrf = login_csrf(request)
    response = render.page(request, "login.html",
                           {"next": safe_next(next_), "email": email, "error": error,
                            "csrf": csrf}, status_code=status_code)
    keep_login_csrf(response, request, csrf)
    return response


@router.get("/login")
def login_page(request: Request, next: str = "/admin") -> Response:
    return _form(request, next_=next)


@router.post("/login")
def login(
    request: Request,
    resources: ResourcesDep,
    limits: LoginLimitsDep,
    address: ClientAddressDep,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/admin",
) -> Response:
    if not login_csrf_ok(request, csrf):
        return render.message(request, 403, "Forbidden",
                              "The sign-in form expired or was not sent from this site; "
                              "reload it and try again.")
    try:
        user = authenticate(resources.sessions, email=email, password=password, limits=limits,
                            client_address=address)
        with resources.sessions() as session:
            admin = require_admin(session, user.id)
    except TryLater as exc:
        limited = isinstance(exc, LoginRateLimited)
        return render.message(request, 429 if limited else 503,
                              "Too many attempts" if limited else "Busy", exc.message,
                              retry_after=exc.retry_after_s)
    except Forbidden as exc:
        log.warning("admin_login_refused", reason="not_admin")
        return render.message(request, 403, "Forbidden", exc.message)
    except DomainError:
        return _form(request, next_=next, email=email, error="Wrong email or password.",
                     status_code=401)
    log.info("admin_login", admin=admin.email)
    response = RedirectResponse(safe_next(next), status_code=303)
    set_session(response, request, resources, admin.id)
    return response


@router.post("/logout")
def logout(_: CheckedAdminDep) -> Response:
    response = RedirectResponse("/admin/login", status_code=303)
    clear_session(response)
    return response
