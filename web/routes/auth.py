"""Endpoints: auth (CONTRACT §5): register and login."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header
from pydantic import BaseModel, Field, field_validator

from services.accounts import auth
from web.deps import ResourcesDep
from web.errors import ApiError
from web.routes.cart import parse_session_id

router = APIRouter(prefix="/auth", tags=["auth"])

# Deliberately loose (one @, a dot in the domain, no spaces): the welcome email is the
# real check, and stricter patterns reject valid addresses.
_EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class Credentials(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(min_length=1, max_length=1024)

    @field_validator("email")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()


class RegisterIn(Credentials):
    email: str = Field(max_length=320, pattern=_EMAIL_PATTERN)
    # argon2 accepts any length; the upper bound only caps the work one request can cause.
    password: str = Field(min_length=8, max_length=1024)
    name: str = Field(default="", max_length=200)


def _auth_body(result: auth.AuthResult) -> dict[str, Any]:
    return {"user": auth.user_view(result.user), "token": result.token}


@router.post("/register", status_code=201)
def register(body: RegisterIn, resources: ResourcesDep) -> Any:
    try:
        result = auth.register(
            resources.sessions,
            resources.broker,
            resources.settings,
            email=body.email,
            password=body.password,
            name=body.name.strip(),
        )
    except auth.EmailTaken:
        raise ApiError(409, "email_taken", "An account with this email already exists.") from None
    return _auth_body(result)


@router.post("/login")
def login(
    body: Credentials,
    resources: ResourcesDep,
    x_session_id: Annotated[str | None, Header()] = None,
) -> Any:
    session_id = parse_session_id(x_session_id)
    try:
        result = auth.login(
            resources.sessions,
            resources.cache,
            resources.broker,
            resources.settings,
            email=body.email,
            password=body.password,
            session_id=session_id,
        )
    except auth.InvalidCredentials:
        raise ApiError(
            401, "invalid_credentials", "Email or password is incorrect."
        ) from None
    return {**_auth_body(result), "migration": result.migration}
