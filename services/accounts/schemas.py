"""Requests and views of the accounts API (CONTRACT §5: user `{id, email, name, balance}`)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.accounts import validation as rules

MigrationOutcome = Literal["queued", "done", "none"]


class Credentials(BaseModel):
    """Login: any string may be tried (a wrong one is 401, not 422)."""

    email: str = Field(max_length=rules.MAX_EMAIL_LENGTH)
    password: str = Field(min_length=1, max_length=rules.MAX_PASSWORD_LENGTH)

    # Before the field's own checks: registration's pattern must see the stripped address
    # (otherwise " ana@example.com " is refused although it is stored stripped).
    @field_validator("email", mode="before")
    @classmethod
    def _strip(cls, value: object) -> object:
        return rules.normalise_email(value) if isinstance(value, str) else value


class RegisterIn(Credentials):
    email: str = Field(max_length=rules.MAX_EMAIL_LENGTH, pattern=rules.EMAIL_PATTERN)
    password: str = Field(
        min_length=rules.MIN_PASSWORD_LENGTH, max_length=rules.MAX_PASSWORD_LENGTH
    )
    name: str = Field(default="", max_length=rules.MAX_NAME_LENGTH)


class UserView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    name: str
    balance: Decimal


class AuthView(BaseModel):
    """`POST /auth/register`: the new user and a bearer token."""

    user: UserView
    token: str


class LoginView(AuthView):
    """`POST /auth/login`: also what became of the guest session's cart and wishlist."""

    migration: MigrationOutcome
