"""Endpoints: cart and wishlist (CONTRACT §5). The owner is the bearer token's user, else
the guest's X-Session-Id (`web.deps.reading_owner` / `writing_owner`): a read without
either is empty, a write without either starts a new guest session whose id comes back in
the `X-Session-Id` response header.

Both are `services.cart.store.ItemStore`s, so reading and removing are the same two
endpoints over either store; only adding differs (a cart line has a quantity).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from enum import Enum
from typing import Any, TypeVar

from fastapi import APIRouter
from pydantic import BaseModel

from services.cart import service as cart
from services.cart import wishlist
from services.cart.schemas import CartItemIn, CartView, WishlistItemIn, WishlistView
from services.cart.store import ItemStore
from web.deps import (
    SESSION_HEADER,
    ReadingOwnerDep,
    ResourcesDep,
    SessionDep,
    WritingOwnerDep,
)
from web.errors import error_responses

router = APIRouter()

_OWNER_ERRORS = (401,)  # a bad token (a malformed session id is 422)
_PUT_ERRORS = error_responses(*_OWNER_ERRORS, 404, 409)  # unknown game, unavailable game
# Documented on every write: an anonymous writer learns its new guest session here.
_NEW_SESSION: dict[int | str, dict[str, Any]] = {200: {"headers": {SESSION_HEADER: {
    "description": "Only when the request had neither a token nor X-Session-Id: the new "
                   "guest session (128 random bits) to send from now on.",
    "schema": {"type": "string"},
}}}}

ViewT = TypeVar("ViewT", bound=BaseModel)


def _read_and_remove(path: str, store: ItemStore[ViewT], empty: ViewT) -> None:
    tags: list[str | Enum] = [store.name]

    @router.get(
        path, response_model=store.view, tags=tags, name=f"get_{store.name}",
        responses=error_responses(*_OWNER_ERRORS),
    )
    def read(owner: ReadingOwnerDep, session: SessionDep, resources: ResourcesDep) -> BaseModel:
        if owner is None:
            # Nobody to look up: answered without touching Postgres or caching anything.
            return empty
        return store.get(session, resources.cache, owner)

    @router.delete(
        f"{path}/items/{{game_id}}", response_model=store.view, tags=tags,
        name=f"delete_{store.name}_item",
        responses={**error_responses(*_OWNER_ERRORS), **_NEW_SESSION},
    )
    def remove(
        game_id: uuid.UUID, owner: WritingOwnerDep, session: SessionDep, resources: ResourcesDep
    ) -> BaseModel:
        return store.delete(session, resources.cache, owner, game_id)


_read_and_remove("/cart", cart.CART, CartView(items=[], total=Decimal("0.00")))
_read_and_remove("/wishlist", wishlist.WISHLIST, WishlistView(items=[]))


@router.put("/cart/items", response_model=CartView, tags=["cart"],
            responses={**_PUT_ERRORS, **_NEW_SESSION})
def put_cart_item(
    body: CartItemIn, owner: WritingOwnerDep, session: SessionDep, resources: ResourcesDep
) -> CartView:
    return cart.put_item(session, resources.cache, owner, body.game_id, body.quantity)


@router.put("/wishlist/items", response_model=WishlistView, tags=["wishlist"],
            responses={**_PUT_ERRORS, **_NEW_SESSION})
def put_wishlist_item(
    body: WishlistItemIn, owner: WritingOwnerDep, session: SessionDep, resources: ResourcesDep
) -> WishlistView:
    return wishlist.put_item(session, resources.cache, owner, body.game_id)
