"""FastAPI dependencies: per-request session, process resources, the caller's identity.

Identity failures are `services.errors.Unauthorized` (401 with a Bearer challenge,
decided in `web/errors.py`); the cart/wishlist owner rules are `services.cart.owner`'s.

Guests (CONTRACT §5): a read with neither a token nor `X-Session-Id` is an empty cart (no
owner, nothing created); a write without either gets a fresh random session id, stored as
the new rows' owner and sent back in the `X-Session-Id` response header for the client to
keep.

The dependencies that only read the request (no I/O) are `async def`: FastAPI then runs
them on the event loop instead of hopping to the thread pool once each, so a burst of slow
requests (logins waiting for a hashing slot) does not queue every other request's
dependencies behind it.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request, Response
from sqlalchemy.orm import Session

from keysync.resources import Resources
from services.accounts import tokens
from services.accounts.rate_limit import LoginLimits
from services.cart.owner import Owner, new_session_id, parse_session_id
from services.errors import Unauthorized
from web.intake import WebhookIntake

SESSION_HEADER = "X-Session-Id"

_login_limits_lock = threading.Lock()


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


async def get_webhook_intake(request: Request) -> WebhookIntake:
    """The app's webhook intake (secrets, inbox writer, job sender), made on the first
    webhook of each event loop; the webhook router's lifespan closes it. Making it awaits
    nothing, so two first requests cannot both make one. The route's only dependency: each
    one costs the hottest endpoint a resolution per request."""
    state = request.app.state
    intake: WebhookIntake | None = getattr(state, "webhook_intake", None)
    if intake is None or intake.loop is not asyncio.get_running_loop():
        # A new loop (a test client without lifespan runs one per request): the old one's
        # connections and sender end with it, when it is collected.
        resources: Resources = state.resources
        intake = state.webhook_intake = WebhookIntake(resources.settings, resources.broker)
    return intake


def get_session(resources: Annotated[Resources, Depends(get_resources)]) -> Iterator[Session]:
    session = resources.sessions()
    try:
        yield session
    finally:
        session.close()


async def optional_user_id(
    resources: Annotated[Resources, Depends(get_resources)],
    authorization: Annotated[str | None, Header()] = None,
) -> uuid.UUID | None:
    """The bearer token's user, None without a token; 401 for a bad or expired token."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization must be 'Bearer <token>'.")
    return tokens.verify(token, resources.settings.jwt_secret.get_secret_value())


async def current_user_id(
    user_id: Annotated[uuid.UUID | None, Depends(optional_user_id)],
) -> uuid.UUID:
    if user_id is None:
        raise Unauthorized()
    return user_id


async def guest_session_id(x_session_id: Annotated[str | None, Header()] = None) -> str | None:
    """The validated `X-Session-Id` (guest cart owner), None when absent."""
    return parse_session_id(x_session_id)


async def reading_owner(
    user_id: Annotated[uuid.UUID | None, Depends(optional_user_id)],
    x_session_id: Annotated[str | None, Header()] = None,
) -> Owner | None:
    """The signed-in user (the header is then ignored), else the guest session; None for
    an anonymous reader, whose cart and wishlist are empty."""
    if user_id is None and x_session_id is None:
        return None
    return Owner.of(user_id, x_session_id)


async def writing_owner(
    response: Response,
    user_id: Annotated[uuid.UUID | None, Depends(optional_user_id)],
    x_session_id: Annotated[str | None, Header()] = None,
) -> Owner:
    """As `reading_owner`, but an anonymous writer becomes a new guest session, whose id
    goes back in the `X-Session-Id` response header."""
    if user_id is None and x_session_id is None:
        session_id = new_session_id()
        response.headers[SESSION_HEADER] = session_id
        return Owner.guest(session_id)
    return Owner.of(user_id, x_session_id)


async def client_address(request: Request) -> str:
    """The client's address for per-address limits: the socket peer. Behind a reverse
    proxy, uvicorn's FORWARDED_ALLOW_IPS must name the proxy so the peer becomes the address
    the proxy reports; nothing here reads `X-Forwarded-For` itself (any client can send
    one)."""
    return request.client.host if request.client is not None else "unknown"


async def login_limits(request: Request) -> LoginLimits:
    """The process's sign-in limits (their per-process fallback counters live with them),
    made once per app from its resources."""
    state = request.app.state
    limits: LoginLimits | None = getattr(state, "login_limits", None)
    if limits is None:
        with _login_limits_lock:
            limits = getattr(state, "login_limits", None)
            if limits is None:
                resources: Resources = state.resources
                limits = LoginLimits.from_settings(resources.redis, resources.settings)
                state.login_limits = limits
    return limits


SessionDep = Annotated[Session, Depends(get_session)]
ResourcesDep = Annotated[Resources, Depends(get_resources)]
WebhookIntakeDep = Annotated[WebhookIntake, Depends(get_webhook_intake)]
UserIdDep = Annotated[uuid.UUID, Depends(current_user_id)]
OptionalUserIdDep = Annotated[uuid.UUID | None, Depends(optional_user_id)]
GuestSessionIdDep = Annotated[str | None, Depends(guest_session_id)]
ReadingOwnerDep = Annotated[Owner | None, Depends(reading_owner)]
WritingOwnerDep = Annotated[Owner, Depends(writing_owner)]
ClientAddressDep = Annotated[str, Depends(client_address)]
LoginLimitsDep = Annotated[LoginLimits, Depends(login_limits)]
