"""Refusals about a game that a cart, a wishlist, a migration or an order refers to."""

from __future__ import annotations

import uuid

from services.errors import DomainError


class GameNotFound(DomainError):
    """No game has this id."""

    code = "game_not_found"

    def __init__(self, game_id: uuid.UUID | str, *, code: str | None = None) -> None:
        self.game_id = str(game_id)
        super().__init__(f"Game {game_id} does not exist.", code=code)


class GameUnavailable(DomainError):
    """The game exists but cannot be taken now: delisted (inactive), or out of stock where
    stock matters."""

    code = "game_unavailable"

    def __init__(self, game_id: uuid.UUID | str) -> None:
        self.game_id = str(game_id)
        super().__init__(f"Game {game_id} is not available.")
