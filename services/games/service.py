"""The games read side: one game and one page of the catalog, as the API shows them.

Used by the endpoints (through the cache) and by the invariant checker (to compare cached
entries with Postgres). The catalog writes (sync, stock check) invalidate `game:{id}` and
the `games:list:*` family.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Game

PAGE_SIZE = 20


class GameNotFound(Exception):
    pass


def game_view(game: Game) -> dict[str, Any]:
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


def load_game(session: Session, game_id: uuid.UUID) -> dict[str, Any]:
    """One game; raises GameNotFound (rather than returning None) so a miss is never cached
    and a game added by the next sync is visible at once. Runs in the caller's transaction."""
    game = session.get(Game, game_id)
    if game is None:
        raise GameNotFound(str(game_id))
    return game_view(game)


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def load_page(session: Session, search: str, page: int) -> dict[str, Any]:
    """One page of active games whose name contains `search` (case-insensitive)."""
    conditions = [Game.is_active.is_(True)]
    if search:
        conditions.append(Game.name.ilike(f"%{_escape_like(search)}%", escape="\\"))
    total = session.scalar(select(func.count()).select_from(Game).where(*conditions)) or 0
    games = (
        session.execute(
            select(Game)
            .where(*conditions)
            .order_by(Game.name, Game.id)
            .limit(PAGE_SIZE)
            .offset((page - 1) * PAGE_SIZE)
        )
        .scalars()
        .all()
    )
    return {"items": [game_view(g) for g in games], "page": page, "total": total}
