"""JWT access tokens (PyJWT, HS256 only: a token naming any other algorithm is rejected)."""

from __future__ import annotations

import datetime as dt
import uuid

import jwt

from services.accounts.errors import InvalidToken

__all__ = ["ALGORITHM", "InvalidToken", "issue", "verify"]

ALGORITHM = "HS256"


def issue(user_id: uuid.UUID, secret: str, ttl_s: int, *, now: dt.datetime | None = None) -> str:
    issued = now or dt.datetime.now(dt.UTC)
    claims = {"sub": str(user_id), "iat": issued, "exp": issued + dt.timedelta(seconds=ttl_s)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(token: str, secret: str) -> uuid.UUID:
    """The user id of a valid, unexpired HS256 token; InvalidToken otherwise."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]}
        )
        return uuid.UUID(claims["sub"])
    except (jwt.PyJWTError, ValueError) as exc:
        # The reason stays in the cause for logs; the caller only learns "invalid or expired".
        raise InvalidToken() from exc
