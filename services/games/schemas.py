"""The API views of the catalog (CONTRACT §5 game and list shapes)."""

from __future__ import annotations

import uuid
from decimal import Decimal

from pydantic import BaseModel, ConfigDict


class GameView(BaseModel):
    """A game as the shop shows it; `platform`, `region`, `image_url` are extras."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    g2a_product_id: str
    name: str
    slug: str
    price: Decimal
    in_stock: bool
    is_active: bool
    platform: str | None
    region: str | None
    image_url: str | None


class GamePage(BaseModel):
    """One page of active games: `total` counts every match, not just this page."""

    items: list[GameView]
    page: int
    total: int
