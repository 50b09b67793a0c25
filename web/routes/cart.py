"""Endpoints: cart and wishlist (CONTRACT §5). The owner is the bearer token's user, else
the guest's X-Session-Id (`web.deps.current_owner`).

Both are `services.cart.store.ItemStore`s, so reading and removing are the same two
endpoints over either store; only adding differs (a cart line has a quantity).
"""

from __future__ import annotations

import uuid
from enum import Enum
from typing import TypeVar

from fastapi import APIRouter
from pydantic import BaseModel

from services.cart import service as cart
from services.cart import wishlist
from services.cart.schemas import CartItemIn, CartView, WishlistItemIn, WishlistView
from services.cart.store import ItemStore
from web.deps import OwnerDep, ResourcesDep, SessionDep
from web.errors import error_responses

router = APIRouter()

_OWNER_ERRORS = (401,)  # no owner, or a bad token (a malformed session id is 400)
_PUT_ERRORS = error_responses(*_OWNER_ERRORS, 404, 409)  # unknown game, unavailable game

ViewT = TypeVar("ViewT", bound=BaseModel)


def _read_and_remove(path: str, store: ItemStore[ViewT]) -> None:
    tags: list[str | Enum] = [store.name]

    @router.get(
        path, response_model=store.view, tags=tags, name=f"get_{store.name}",
        responses=error_responses(*_OWNER_ERRORS),
    )
    def read(owner: OwnerDep, session: SessionDep, resources: ResourcesDep) -> BaseModel:
        return store.get(session, resources.cache, owner)

    @router.delete(
        f"{path}/items/{{game_id}}", response_model=store.view, tags=tags,
        name=f"delete_{store.name}_item", responses=error_responses(*_OWNER_ERRORS),
    )
    def remove(
        game_id: uuid.UUID, owner: OwnerDep, session: SessionDep, resources: ResourcesDep
    ) -> BaseModel:
        return store.delete(session, resources.cache, owner, game_id)


_read_and_remove("/cart", cart.CART)
_read_and_remove("/wishlist", wishlist.WISHLIST)


@router.put("/cart/items", response_model=CartView, tags=["cart"], responses=_PUT_ERRORS)
def put_cart_item(
    body: CartItemIn, owner: OwnerDep, session: SessionDep, resources: ResourcesDep
) -> CartView:
    return cart.put_item(session, resources.cache, owner, body.game_id, body.quantity)


@router.put("/wishlist/items", response_model=WishlistView, tags=["wishlist"],
            responses=_PUT_ERRORS)
def put_wishlist_item(
    body: WishlistItemIn, owner: OwnerDep, session: SessionDep, resources: ResourcesDep
) -> WishlistView:
    return wishlist.put_item(session, resources.cache, owner, body.game_id)
