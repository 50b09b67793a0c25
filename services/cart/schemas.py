"""Requests and views of carts and wishlists (CONTRACT §5 shapes, plus a few extras)."""

from __future__ import annotations

import uuid
from decimal import Decimal

from pydantic import BaseModel, Field

MIN_QUANTITY = 1
MAX_QUANTITY = 10


class CartItemIn(BaseModel):
    game_id: uuid.UUID
    quantity: int = Field(ge=MIN_QUANTITY, le=MAX_QUANTITY)


class WishlistItemIn(BaseModel):
    game_id: uuid.UUID


class CartLine(BaseModel):
    game_id: uuid.UUID
    quantity: int
    name: str
    price: Decimal = Field(description="the game's current price; checkout reprices")
    available: bool = Field(description="listed and in stock now")


class CartView(BaseModel):
    items: list[CartLine]
    total: Decimal


class WishlistLine(BaseModel):
    game_id: uuid.UUID
    name: str
    price: Decimal
    in_stock: bool
    is_active: bool


class WishlistView(BaseModel):
    items: list[WishlistLine]
