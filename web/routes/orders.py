"""Endpoints: orders (CONTRACT §5). Thin: validate, call services.orders.service, map refusals."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, Field

from services.orders import service as orders
from web.deps import ResourcesDep, SessionDep, UserIdDep
from web.errors import ApiError

router = APIRouter(tags=["orders"])


class OrderLine(BaseModel):
    game_id: uuid.UUID
    quantity: int = Field(default=1, ge=1, le=100)


class CreateOrder(BaseModel):
    items: list[OrderLine] | None = Field(
        default=None, max_length=100, description="omit to buy the cart"
    )


def _api_error(exc: orders.OrderError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message)


@router.post("/orders", status_code=201)
def create_order(
    resources: ResourcesDep,
    user_id: UserIdDep,
    body: CreateOrder | None = Body(default=None),  # noqa: B008
) -> dict[str, Any]:
    lines = None
    if body is not None and body.items is not None:
        lines = [orders.LineRequest(line.game_id, line.quantity) for line in body.items]
    try:
        return orders.create_order(
            resources.sessions, resources.broker, resources.cache, user_id, lines
        )
    except orders.OrderError as exc:
        raise _api_error(exc) from None


@router.get("/orders")
def list_orders(session: SessionDep, resources: ResourcesDep, user_id: UserIdDep) -> dict[str, Any]:
    return orders.list_orders(
        session,
        resources.cache,
        user_id,
        key_encryption_key=resources.settings.key_encryption_key.get_secret_value(),
    )


@router.get("/orders/{order_id}")
def get_order(
    order_id: uuid.UUID, session: SessionDep, resources: ResourcesDep, user_id: UserIdDep
) -> dict[str, Any]:
    try:
        return orders.get_order(
            session,
            resources.cache,
            user_id,
            order_id,
            key_encryption_key=resources.settings.key_encryption_key.get_secret_value(),
        )
    except orders.OrderError as exc:
        raise _api_error(exc) from None
