"""Shared by the console API tests and its schemathesis suite: an admin, a non-admin and
their bearer headers."""

from __future__ import annotations

import uuid

from sqlalchemy import update

from db.models import User
from keysync.resources import Resources
from services.accounts import tokens
from tests.order_helpers import make_user


def bearer(resources: Resources, user_id: uuid.UUID) -> dict[str, str]:
    token = tokens.issue(user_id, resources.settings.jwt_secret.get_secret_value(), 3600)
    return {"Authorization": f"Bearer {token}"}


def make_admin(resources: Resources) -> tuple[uuid.UUID, str]:
    """A user with `is_admin`; (id, email)."""
    user_id = make_user(resources.sessions, "0")
    with resources.sessions() as s, s.begin():
        email = s.execute(update(User).where(User.id == user_id).values(is_admin=True)
                          .returning(User.email)).scalar_one()
    return user_id, email
