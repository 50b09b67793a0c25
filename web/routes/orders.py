"""Endpoints: orders (CONTRACT §5). Thin: validate, call services.orders.service; its
refusals (OrderError, GameUnavailable) become HTTP answers in web/errors.py (409
`insufficient_stock` and `price_changed` carry extra fields in the error object)."""

from __future__ import annotations

import uuid
from decimal import Decimal

from fastapi import APIRouter, Body
from pydantic import BaseModel, Field

from services.cart.schemas import MAX_QUANTITY
from services.orders import service as orders
from services.orders.schemas import OrderList, OrderView
from web.deps import ResourcesDep, SessionDep, UserIdDep
from web.errors import error_responses

router = APIRouter(tags=["orders"])


class OrderLine(BaseModel):
    game_id: uuid.UUID
    # Lines of the same game are added up; the sum is capped too (422 beyond).
    quantity: int = Field(default=1, ge=1, le=MAX_QUANTITY)


class CreateOrder(BaseModel):
    items: list[OrderLine] | None = Field(
        default=None, max_length=100, description="omit to buy the cart"
    )
    expected_total: Decimal | None = Field(
        default=None, ge=0, max_digits=12, decimal_places=2,
        description="the total the customer was shown: 409 price_changed (with "
        "current_total) when the current prices give another total",
    )


# `keys` is only there for a COMPLETED order: omitted otherwise, never null.
@router.post(
    "/orders",
    status_code=201,
    response_model=OrderView,
    response_model_exclude_none=True,
    responses=error_responses(401, 402, 404, 409, 422),
)
def create_order(
    resources: ResourcesDep,
    user_id: UserIdDep,
    body: CreateOrder | None = Body(default=None),  # noqa: B008
) -> OrderView:
    lines = None
    if body is not None and body.items is not None:
        lines = [orders.LineRequest(line.game_id, line.quantity) for line in body.items]
    return orders.create_order(
        resources.sessions, resources.broker, resources.cache, user_id, lines,
        expected_total=body.expected_total if body is not None else None,
    )


@router.get(
    "/orders",
    response_model=OrderList,
    response_model_exclude_none=True,
    responses=error_responses(401),
)
def list_orders(session: SessionDep, resources: ResourcesDep, user_id: UserIdDep) -> OrderList:
    return orders.list_orders(
        session,
        resources.cache,
        user_id,
        key_encryption_key=resources.settings.key_encryption_key.get_secret_value(),
    )


@router.get(
    "/orders/{order_id}",
    response_model=OrderView,
    response_model_exclude_none=True,
    responses=error_responses(401, 404),
)
def get_order(
    order_id: uuid.UUID, session: SessionDep, resources: ResourcesDep, user_id: UserIdDep
) -> OrderView:
    return orders.get_order(
        session,
        resources.cache,
        user_id,
        order_id,
        key_encryption_key=resources.settings.key_encryption_key.get_secret_value(),
    )
