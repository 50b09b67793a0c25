"""Endpoints: games (CONTRACT §5), read through the cache over `services.games.service`."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Query

from services.cache import keys
from services.games import service as games
from web.deps import ResourcesDep, SessionDep
from web.errors import ApiError

router = APIRouter(tags=["games"])

@router.get("/games")
def list_games(
    session: SessionDep,
    resources: ResourcesDep,
    search: str = Query(default="", max_length=200),
    page: int = Query(default=1, ge=1, le=10_000),
) -> dict[str, Any]:
    search = search.strip()
    params = {"search": search.lower(), "page": page}
    with session.begin():  # connects only on a cache miss
        result: dict[str, Any] = resources.cache.read_through(
            keys.games_list(params), keys.LIST_TTL, lambda: games.load_page(session, search, page)
        )
    return result


@router.get("/games/{game_id}")
def get_game(game_id: uuid.UUID, session: SessionDep, resources: ResourcesDep) -> dict[str, Any]:
    try:
        with session.begin():  # connects only on a cache miss
            result: dict[str, Any] = resources.cache.read_through(
                keys.game(game_id), keys.GAME_TTL, lambda: games.load_game(session, game_id)
            )
    except games.GameNotFound:
        raise ApiError(404, "not_found", "game not found") from None
    return result
