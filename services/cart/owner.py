"""Who owns a cart and a wishlist: exactly one of a signed-in user or a guest session."""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from db.models import CartItem, User, WishlistItem
from services.cart.errors import InvalidSessionId
from services.errors import Unauthorized

# Session ids end up inside cache keys and logs: a short, glob-free alphabet keeps them inert.
# A guest session id is the only key to its cart and, at login, to moving the cart into an
# account, so it must be unguessable: at least 22 characters, the length of 128 random bits
# in URL-safe base64 (CONTRACT §5).
SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{22,128}")
SESSION_ID_BYTES = 16


def new_session_id() -> str:
    """A fresh guest session id: 128 random bits, 22 URL-safe characters."""
    return secrets.token_urlsafe(SESSION_ID_BYTES)

ItemModel = type[CartItem] | type[WishlistItem]


def parse_session_id(value: str | None) -> str | None:
    """A validated guest session id (the `X-Session-Id` header), None when absent."""
    if value is None:
        return None
    if not SESSION_ID_PATTERN.fullmatch(value):
        raise InvalidSessionId(
            "X-Session-Id must be 22-128 characters of letters, digits, '.', '_' or '-'."
        )
    return value


@dataclass(frozen=True)
class Owner:
    user_id: uuid.UUID | None = None
    session_id: str | None = None

    def __post_init__(self) -> None:
        if (self.user_id is None) == (self.session_id is None):
            raise ValueError("an owner is exactly one of user_id or session_id")

    @classmethod
    def user(cls, user_id: uuid.UUID) -> Owner:
        return cls(user_id=user_id)

    @classmethod
    def guest(cls, session_id: str) -> Owner:
        return cls(session_id=session_id)

    @classmethod
    def of(cls, user_id: uuid.UUID | None, session_id: str | None) -> Owner:
        """The signed-in user (the session id is then ignored), else the guest session."""
        if user_id is not None:
            return cls.user(user_id)
        session_id = parse_session_id(session_id)
        if session_id is None:
            raise Unauthorized(
                "Send 'Authorization: Bearer <token>' or an X-Session-Id header for a guest.",
                code="owner_required",
            )
        return cls.guest(session_id)

    def where(self, model: ItemModel) -> ColumnElement[bool]:
        if self.user_id is not None:
            return model.user_id == self.user_id
        return model.session_id == self.session_id

    def values(self) -> dict[str, uuid.UUID | str | None]:
        return {"user_id": self.user_id, "session_id": self.session_id}

    def log_context(self) -> dict[str, str]:
        # Session ids are bearer-like for guests; log only a short prefix to correlate lines.
        if self.user_id is not None:
            return {"user_id": str(self.user_id)}
        return {"guest_session": (self.session_id or "")[:8]}

    def ensure_exists(self, session: Session) -> None:
        """Before adding a row: the user owner must exist, and stays until commit (KEY SHARE
        lock), so the insert cannot hit the foreign key. Guest sessions need no row."""
        if self.user_id is None:
            return
        found = session.execute(
            select(User.id).where(User.id == self.user_id).with_for_update(key_share=True)
        ).first()
        if found is None:
            # A well-signed token of a user that no longer exists (deleted, restored database).
            raise Unauthorized("The token's user does not exist.")

    def index_target(self, model: ItemModel) -> tuple[list[str], ColumnElement[bool]]:
        """ON CONFLICT target matching the owner's partial unique index."""
        if self.user_id is not None:
            return ["user_id", "game_id"], model.user_id.is_not(None)
        return ["session_id", "game_id"], model.session_id.is_not(None)
