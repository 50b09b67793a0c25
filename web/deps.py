"""FastAPI dependencies: per-request session, process resources, the caller's identity.

Identity failures are `services.errors.Unauthorized` (401 with a Bearer challenge,
decided in `web/errors.py`); the cart/wishlist owner rules are `services.cart.owner`'s.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from keysync.resources import Resources
from services.accounts import tokens
from services.cart.owner import Owner, parse_session_id
from services.errors import Unauthorized


def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


def get_session(resources: Annotated[Resources, Depends(get_resources)]) -> Iterator[Session]:
    session = resources.sessions()
    try:
        yield session
    finally:
        session.close()


def optional_user_id(
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


def current_user_id(
    user_id: Annotated[uuid.UUID | None, Depends(optional_user_id)],
) -> uuid.UUID:
    if user_id is None:
        raise Unauthorized()
    return user_id


def guest_session_id(x_session_id: Annotated[str | None, Header()] = None) -> str | None:
    """The validated `X-Session-Id` (guest cart owner), None when absent."""
    return parse_session_id(x_session_id)


def current_owner(
    user_id: Annotated[uuid.UUID | None, Depends(optional_user_id)],
    x_session_id: Annotated[str | None, Header()] = None,
) -> Owner:
    """The signed-in user (the header is then ignored), else the guest session."""
    return Owner.of(user_id, x_session_id)


SessionDep = Annotated[Session, Depends(get_session)]
ResourcesDep = Annotated[Resources, Depends(get_resources)]
UserIdDep = Annotated[uuid.UUID, Depends(current_user_id)]
OptionalUserIdDep = Annotated[uuid.UUID | None, Depends(optional_user_id)]
GuestSessionIdDep = Annotated[str | None, Depends(guest_session_id)]
OwnerDep = Annotated[Owner, Depends(current_owner)]
