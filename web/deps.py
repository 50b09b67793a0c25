"""FastAPI dependencies: per-request session, process resources, the caller's identity."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from keysync.resources import Resources
from services.accounts import tokens
from web.errors import ApiError


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
        raise ApiError(
            401,
            "unauthorized",
            "Authorization must be 'Bearer <token>'.",
            {"WWW-Authenticate": "Bearer"},
        )
    try:
        return tokens.verify(token, resources.settings.jwt_secret.get_secret_value())
    except tokens.InvalidToken:
        raise ApiError(
            401, "unauthorized", "Invalid or expired token.", {"WWW-Authenticate": "Bearer"}
        ) from None


def current_user_id(
    user_id: Annotated[uuid.UUID | None, Depends(optional_user_id)],
) -> uuid.UUID:
    if user_id is None:
        raise ApiError(
            401, "unauthorized", "Authentication required.", {"WWW-Authenticate": "Bearer"}
        )
    return user_id


SessionDep = Annotated[Session, Depends(get_session)]
ResourcesDep = Annotated[Resources, Depends(get_resources)]
UserIdDep = Annotated[uuid.UUID, Depends(current_user_id)]
OptionalUserIdDep = Annotated[uuid.UUID | None, Depends(optional_user_id)]
