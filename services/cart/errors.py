"""Refusals about who owns a cart or wishlist.

Refusals about the game itself (unknown, unavailable) are `services.games.errors`'; a
missing or stale identity is `services.errors.Unauthorized`.
"""

from __future__ import annotations

from services.errors import InvalidInput


class InvalidSessionId(InvalidInput):
    """A guest session id outside the alphabet or length that keeps it inert in cache keys
    and unguessable (CONTRACT §5: 422)."""

    code = "invalid_session_id"
