"""Endpoints: games (CONTRACT §5), cached reads of `services.games.service`."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query

from services.games import service as games
from services.games.schemas import GamePage, GameView
from web.deps import ResourcesDep, SessionDep
from web.errors import error_responses

router = APIRouter(tags=["games"])


@router.get("/games", response_model=GamePage)
def list_games(
    session: SessionDep,
    resources: ResourcesDep,
    search: str = Query(default="", max_length=200),
    page: int = Query(default=1, ge=1, le=10_000),
) -> GamePage:
    return games.list_games(session, resources.cache, search, page)


@router.get("/games/{game_id}", response_model=GameView, responses=error_responses(404))
def get_game(game_id: uuid.UUID, session: SessionDep, resources: ResourcesDep) -> GameView:
    return games.get_game(session, resources.cache, game_id)
