"""Endpoints: games (CONTRACT §5), read through the cache.

The two queries live here because they are the whole of the games read side; the catalog
writes (sync, stock check) invalidate `game:{id}` and the `games:list:*` family.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Game
from services.cache import keys
from web.deps import ResourcesDep, SessionDep
from web.errors import ApiError

router = APIRouter(tags=["games"])

PAGE_SIZE = 20


def _game_view(game: Game) -> dict[str, Any]:
    return {
        "id": str(game.id),
        "g2a_product_id": game.g2a_product_id,
        "name": game.name,
        "slug": game.slug,
        "price": str(game.price),
        "in_stock": game.in_stock,
        "is_active": game.is_active,
        "platform": game.platform,
        "region": game.region,
        "image_url": game.image_url,
    }


def _load_game(session: Session, game_id: uuid.UUID) -> dict[str, Any]:
    # Raising (rather than returning None) keeps a miss out of the cache, so a game added
    # by the next sync is visible at once. Runs in the caller's transaction.
    game = session.get(Game, game_id)
    if game is None:
        raise ApiError(404, "not_found", "game not found")
    return _game_view(game)


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _load_page(session: Session, search: str, page: int) -> dict[str, Any]:
    conditions = [Game.is_active.is_(True)]
    if search:
        conditions.append(Game.name.ilike(f"%{_escape_like(search)}%", escape="\\"))
    total = session.scalar(select(func.count()).select_from(Game).where(*conditions)) or 0
    games = session.execute(
        select(Game)
        .where(*conditions)
        .order_by(Game.name, Game.id)
        .limit(PAGE_SIZE)
        .offset((page - 1) * PAGE_SIZE)
    ).scalars().all()
    return {"items": [_game_view(g) for g in games], "page": page, "total": total}


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
            keys.games_list(params), keys.LIST_TTL, lambda: _load_page(session, search, page)
        )
    return result


@router.get("/games/{game_id}")
def get_game(game_id: uuid.UUID, session: SessionDep, resources: ResourcesDep) -> dict[str, Any]:
    with session.begin():  # connects only on a cache miss
        result: dict[str, Any] = resources.cache.read_through(
            keys.game(game_id), keys.GAME_TTL, lambda: _load_game(session, game_id)
        )
    return result
