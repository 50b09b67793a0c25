"""Endpoints: wishlist (CONTRACT §5). Same owner rules as the cart."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from services.cart import service as cart
from services.cart import wishlist
from web.deps import ResourcesDep, SessionDep
from web.routes.cart import OwnerDep, item_errors

router = APIRouter(tags=["wishlist"])


class WishlistItemIn(BaseModel):
    game_id: uuid.UUID


@router.get("/wishlist")
def get_wishlist(owner: OwnerDep, session: SessionDep, resources: ResourcesDep) -> Any:
    return wishlist.get_wishlist(session, resources.cache, owner)


@router.put("/wishlist/items")
def put_wishlist_item(
    body: WishlistItemIn, owner: OwnerDep, session: SessionDep, resources: ResourcesDep
) -> Any:
    try:
        return wishlist.put_item(session, resources.cache, owner, body.game_id)
    except (cart.GameNotFound, cart.GameUnavailable, cart.OwnerNotFound) as exc:
        raise item_errors(exc, body.game_id) from None


@router.delete("/wishlist/items/{game_id}")
def delete_wishlist_item(
    game_id: uuid.UUID, owner: OwnerDep, session: SessionDep, resources: ResourcesDep
) -> Any:
    return wishlist.delete_item(session, resources.cache, owner, game_id)
