"""The games read side, and the one rule for what a cart, wishlist or order may take.

`load_game` is the one lookup every domain uses to refer to a game by id (cart, wishlist,
guest migration, orders): it raises `GameNotFound`, or `GameUnavailable` when the game
fails the caller's rule (`is_buyable` for carts and orders, `is_listed` for wishlists).

The API's reads (`get_game`, `list_games`) go through the cache; the catalog writes (sync,
stock check) invalidate `game:{id}` and the `games:list:*` family. `load_game_view` and
`load_page` are the uncached loaders, also used by the invariant checker to compare cached
entries with Postgres.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Game
from services.cache import Cache, keys
from services.games.errors import GameNotFound, GameUnavailable
from services.games.schemas import GamePage, GameView

PAGE_SIZE = 20


class Listed(Protocol):
    """What the availability rules read: a `Game`, or a row selecting these columns."""

    @property
    def is_active(self) -> bool: ...
    @property
    def in_stock(self) -> bool: ...


def is_buyable(game: Listed) -> bool:
    """What can go into a cart or an order: listed and in stock."""
    return game.is_active and game.in_stock


def is_listed(game: Listed) -> bool:
    """What can be wished for: listed, in stock or not (waiting for a restock is what a
    wishlist is for)."""
    return game.is_active


def load_game(
    session: Session, game_id: uuid.UUID, *, must_be: Callable[[Listed], bool] | None = None
) -> Game:
    """The game, in the caller's transaction; GameNotFound, or GameUnavailable when it
    fails `must_be`."""
    game = session.get(Game, game_id)
    if game is None:
        raise GameNotFound(game_id)
    if must_be is not None and not must_be(game):
        raise GameUnavailable(game_id)
    return game


def load_game_view(session: Session, game_id: uuid.UUID) -> GameView:
    """One game from Postgres; raises GameNotFound (rather than returning None) so a miss is
    never cached and a game added by the next sync is visible at once."""
    return GameView.model_validate(load_game(session, game_id))


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def load_page(session: Session, search: str, page: int) -> GamePage:
    """One page of active games whose name contains `search` (case-insensitive)."""
    conditions = [Game.is_active.is_(True)]
    if search:
        conditions.append(Game.name.ilike(f"%{_escape_like(search)}%", escape="\\"))
    total = session.scalar(select(func.count()).select_from(Game).where(*conditions)) or 0
    games = session.scalars(
        select(Game)
        .where(*conditions)
        .order_by(Game.name, Game.id)
        .limit(PAGE_SIZE)
        .offset((page - 1) * PAGE_SIZE)
    ).all()
    return GamePage(items=[GameView.model_validate(g) for g in games], page=page, total=total)


def get_game(session: Session, cache: Cache, game_id: uuid.UUID) -> GameView:
    """`GET /games/{id}`: read through `game:{id}`. A game missing from the path is the
    generic `not_found`, as an order is."""
    try:
        with session.begin():  # connects only on a cache miss
            cached = cache.read_through(
                keys.game(game_id),
                keys.GAME_TTL,
                lambda: load_game_view(session, game_id).model_dump(mode="json"),
            )
    except GameNotFound:
        raise GameNotFound(game_id, code="not_found") from None
    return GameView.model_validate(cached)


def list_games(session: Session, cache: Cache, search: str, page: int) -> GamePage:
    """`GET /games`: one page read through `games:list:{hash of the normalised query}`."""
    search = search.strip()
    params: dict[str, str | int] = {"search": search.lower(), "page": page}
    with session.begin():  # connects only on a cache miss
        cached = cache.read_through(
            keys.games_list(params),
            keys.LIST_TTL,
            lambda: load_page(session, search, page).model_dump(mode="json"),
        )
    return GamePage.model_validate(cached)
