"""Endpoints: cart (CONTRACT §5). The owner is the bearer token's user, else X-Session-Id."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from pydantic import BaseModel, Field

from services.cart import service as cart
from services.cart.service import Owner
from web.deps import OptionalUserIdDep, ResourcesDep, SessionDep
from web.errors import ApiError

router = APIRouter(tags=["cart"])

# Session ids end up inside cache keys and logs: a short, glob-free alphabet keeps them inert.
SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")


def parse_session_id(value: str | None) -> str | None:
    """A validated X-Session-Id, None when absent; 400 when malformed."""
    if value is None:
        return None
    if not SESSION_ID_PATTERN.fullmatch(value):
        raise ApiError(
            400,
            "invalid_session_id",
            "X-Session-Id must be 1-128 characters of letters, digits, '.', '_' or '-'.",
        )
    return value


def current_owner(
    user_id: OptionalUserIdDep,
    x_session_id: Annotated[str | None, Header()] = None,
) -> Owner:
    """The signed-in user (the header is then ignored), else the guest session."""
    if user_id is not None:
        return Owner.user(user_id)
    session_id = parse_session_id(x_session_id)
    if session_id is None:
        raise ApiError(
            401,
            "owner_required",
            "Send 'Authorization: Bearer <token>' or an X-Session-Id header for a guest.",
            {"WWW-Authenticate": "Bearer"},
        )
    return Owner.guest(session_id)


OwnerDep = Annotated[Owner, Depends(current_owner)]


class CartItemIn(BaseModel):
    game_id: uuid.UUID
    quantity: int = Field(ge=cart.MIN_QUANTITY, le=cart.MAX_QUANTITY)


def item_errors(exc: Exception, game_id: uuid.UUID) -> ApiError:
    if isinstance(exc, cart.OwnerNotFound):
        return ApiError(401, "unauthorized", "The token's user does not exist.",
                        {"WWW-Authenticate": "Bearer"})
    if isinstance(exc, cart.GameNotFound):
        return ApiError(404, "game_not_found", f"Game {game_id} does not exist.")
    return ApiError(409, "game_unavailable", f"Game {game_id} is not available.")


@router.get("/cart")
def get_cart(owner: OwnerDep, session: SessionDep, resources: ResourcesDep) -> Any:
    return cart.get_cart(session, resources.cache, owner)


@router.put("/cart/items")
def put_cart_item(
    body: CartItemIn, owner: OwnerDep, session: SessionDep, resources: ResourcesDep
) -> Any:
    try:
        return cart.put_item(session, resources.cache, owner, body.game_id, body.quantity)
    except (cart.GameNotFound, cart.GameUnavailable, cart.OwnerNotFound) as exc:
        raise item_errors(exc, body.game_id) from None


@router.delete("/cart/items/{game_id}")
def delete_cart_item(
    game_id: uuid.UUID, owner: OwnerDep, session: SessionDep, resources: ResourcesDep
) -> Any:
    return cart.delete_item(session, resources.cache, owner, game_id)
