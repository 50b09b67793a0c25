"""Helpers the catalog sync and stock check tests share (their fixtures are in conftest.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from db.models import Game
from g2a_sim import SimServer
from services.cache import Cache
from services.cache import keys as cache_keys

MARKUP = Decimal("2")
FAST = 600_000  # requests/min: the limiter is exercised but never waits in tests


def sim_post(sim: SimServer, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(sim.url + path, json=body, timeout=5.0)
    response.raise_for_status()
    return response.json()


def game_ids(session: Session, product_ids: list[str]) -> dict[str, Any]:
    rows = session.execute(
        select(Game.g2a_product_id, Game.id).where(Game.g2a_product_id.in_(product_ids))
    ).all()
    return {pid: gid for pid, gid in rows}


def cache_games(cache: Cache, session: Session, product_ids: list[str]) -> dict[str, Any]:
    """Put `game:{id}` of these products in the cache (to see what a run invalidates);
    their game ids by product id."""
    ids = game_ids(session, product_ids)
    for gid in ids.values():
        cache.set(cache_keys.game(gid), {"cached": True}, cache_keys.GAME_TTL)
    return ids


def row_versions(session: Session) -> str:
    """Fingerprint of every games row version: any INSERT or UPDATE changes some xmin."""
    value = session.execute(
        text("SELECT md5(string_agg(id::text || ':' || xmin::text, ',' ORDER BY id)) FROM games")
    ).scalar_one()
    session.rollback()
    return str(value)


def sim_stats(sim: SimServer) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(sim.url + "/_sim/stats", timeout=5.0).json()
    return data


def count_games(session: Session, **where: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(Game).filter_by(**where)) or 0)


def active_ids(session: Session) -> set[str]:
    session.expire_all()
    return set(session.scalars(select(Game.g2a_product_id).where(Game.is_active)))


def sim_ids(sim: SimServer) -> set[str]:
    with sim.state.lock:
        return {str(pid) for pid in sim.state.ids}
