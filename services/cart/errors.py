"""Refusals about who owns a cart or wishlist.

Refusals about the game itself (unknown, unavailable) are `services.games.errors`'; a
missing or stale identity is `services.errors.Unauthorized`.
"""

from __future__ import annotations

from services.errors import InvalidInput


class InvalidSessionId(InvalidInput):
    """A guest session id outside the alphabet or length that keeps it inert in cache keys
    (answered 400 like a malformed header, not 422 like a refused body)."""

    code = "invalid_session_id"
