"""Helpers the catalog sync and stock check tests share (their fixtures are in conftest.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from db.models import Game
from g2a_sim import SimServer

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


def row_versions(session: Session) -> str:
    """Fingerprint of every games row version: any INSERT or UPDATE changes some xmin."""
    value = session.execute(
        text("SELECT md5(string_agg(id::text || ':' || xmin::text, ',' ORDER BY id)) FROM games")
    ).scalar_one()
    session.rollback()
    return str(value)
