"""The console's sign-in session and CSRF protection (CONTRACT §8).

- The session cookie holds a short-lived JWT (`services.accounts.tokens`, 8 h) signed with
  a key derived from `JWT_SECRET` for the console alone, so an API bearer token is not a
  console session and a console cookie is not a bearer token. HttpOnly, SameSite=Strict,
  Path=/admin, Secure when the request came over https.
- The admin is re-checked on every request (`require_admin`): revoking `is_admin` signs the
  admin out at once, whatever the cookie says.
- CSRF: every state-changing form carries `csrf`, the HMAC of the session cookie under
  another derived key (htmx posts may send it as `X-CSRF-Token`). The sign-in form, which
  has no session yet, uses a double-submit cookie instead. A wrong or missing token is 403
  before the handler runs, so nothing changes.
- Refusals are pages, not JSON: `ConsoleRoute` turns `ConsoleRefusal` (raised by these
  dependencies or by handlers) into its response, since a router cannot own exception
  handlers.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse

from keysync.resources import Resources
from services.accounts import tokens
from services.errors import Forbidden, Unauthorized
from services.ops.admins import require_admin
from web.admin import render
from web.deps import ResourcesDep

SESSION_COOKIE = "keysync_admin"
LOGIN_CSRF_COOKIE = "keysync_admin_login"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 8 * 3600
COOKIE_PATH = "/admin"


class ConsoleRefusal(Exception):
    """A console request answered with `response` instead of its page."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class ConsoleRoute(APIRoute):
    """An APIRoute whose `ConsoleRefusal`s (from its dependencies too) become responses."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ConsoleRefusal as refusal:
                return refusal.response

        return handle


def _key(resources: Resources, purpose: str) -> bytes:
    secret = resources.settings.jwt_secret.get_secret_value().encode()
    return hmac.new(secret, f"keysync admin console {purpose}".encode(), hashlib.sha256).digest()


def _session_secret(resources: Resources) -> str:
    return _key(resources, "session").hex()


def csrf_token(resources: Resources, cookie: str) -> str:
    """The CSRF token of the session whose cookie value is `cookie`."""
    return hmac.new(_key(resources, "csrf"), cookie.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Admin:
    """The signed-in admin of one request, and the CSRF token its forms carry."""

    id: uuid.UUID
    email: str
    csrf: str


def safe_next(target: str | None) -> str:
    """Where to go after sign-in: only a path inside the console (no scheme, no host, no
    `//evil` or `/\\evil` that a browser would read as another site)."""
    if not target:
        return COOKIE_PATH
    parts = urlsplit(target)
    if (parts.scheme or parts.netloc or not target.startswith(COOKIE_PATH)
            or target.startswith("//") or "\\" in target):
        return COOKIE_PATH
    return target


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{COOKIE_PATH}/login?next={quote(target, safe='')}",
                            status_code=303)


def _is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session(response: Response, request: Request, resources: Resources,
                user_id: uuid.UUID) -> None:
    token = tokens.issue(user_id, _session_secret(resources), SESSION_TTL_S)
    response.set_cookie(SESSION_COOKIE, token, max_age=SESSION_TTL_S, path=COOKIE_PATH,
                        httponly=True, samesite="strict", secure=_is_https(request))


def clear_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")


def login_csrf(request: Request) -> str:
    """The sign-in form's token: the one already in the browser's cookie, or a new one."""
    return request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)


def keep_login_csrf(response: Response, request: Request, token: str) -> None:
    """The double-submit cookie matching the sign-in form's hidden field."""
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, path=COOKIE_PATH,
                        httponly=True, samesite="strict", secure=_is_https(request))


def login_csrf_ok(request: Request, submitted: str) -> bool:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    return bool(expected) and hmac.compare_digest(expected or "", submitted)


def _admin_of(resources: Resources, user_id: uuid.UUID) -> str:
    with resources.sessions() as session:
        return require_admin(session, user_id).email


def forbidden(request: Request, message: str) -> ConsoleRefusal:
    return ConsoleRefusal(render.message(request, 403, "Forbidden", message))


async def signed_in_admin(request: Request, resources: ResourcesDep) -> Admin:
    """The admin behind the session cookie. No cookie, a bad or expired one, or a deleted
    user: redirect to sign-in. A user who is not (or no longer) an admin: 403."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise ConsoleRefusal(login_redirect(request))
    try:
        user_id = tokens.verify(cookie, _session_secret(resources))
        email = await run_in_threadpool(_admin_of, resources, user_id)
    except Forbidden as exc:
        raise forbidden(request, exc.message) from exc
    except Unauthorized as exc:
        refusal = login_redirect(request)
        clear_session(refusal)
        raise ConsoleRefusal(refusal) from exc
    return Admin(id=user_id, email=email, csrf=csrf_token(resources, cookie))


AdminDep = Annotated[Admin, Depends(signed_in_admin)]


async def checked_admin(request: Request, admin: AdminDep) -> Admin:
    """`signed_in_admin` for a state-changing request: its CSRF token (form field or
    header) must match the session's, else 403 and the handler never runs."""
    submitted = request.headers.get(CSRF_HEADER)
    if submitted is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        submitted = value if isinstance(value, str) else ""
    if not hmac.compare_digest(admin.csrf, submitted):
        raise forbidden(request, "The form's CSRF token is missing or wrong; reload the page.")
    return admin


CheckedAdminDep = Annotated[Admin, Depends(checked_admin)]
