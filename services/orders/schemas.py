"""The order views (CONTRACT §5): what the API answers and what the cache holds.

Two forms of one order. `CachedOrder` is what `order:{id}` and `user:{id}:orders` hold: the
stored Fernet tokens (`keys_encrypted`), never plaintext keys, so Redis only ever sees
ciphertext. `OrderView` is the API answer built from it by `service.present`: keys decrypted,
and only for a COMPLETED order.

Values keep the text forms the API has always had (money as `"10.00"`, ids as strings,
timestamps in Python's `isoformat`, e.g. `+00:00` where pydantic would write `Z`), so a
cached entry written before these models existed reads back unchanged. `keys` and
`keys_encrypted` are None when absent; the routes and the cache drop None fields, so they
are omitted rather than `null`, as before.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, PlainSerializer

from db.models import OrderStatus

Money = Annotated[Decimal, PlainSerializer(str, return_type=str)]
Timestamp = Annotated[dt.datetime, PlainSerializer(dt.datetime.isoformat, return_type=str)]


class OrderLineView(BaseModel):
    model_config = ConfigDict(frozen=True)

    game_id: uuid.UUID
    quantity: int
    unit_price: Money
    # Keys the customer got for this line: the stored keys of a COMPLETED order, else 0.
    # Below `quantity` on a COMPLETED order when G2A stopped selling mid-way (the rest is
    # in the order's `refunded`). The default reads cache entries written before the field.
    delivered: int = 0


class _OrderBase(BaseModel):
    # Field order is the JSON key order of the answer.
    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    user_id: uuid.UUID
    status: OrderStatus
    total: Money
    # The order's one REFUND: the total for FAILED/CANCELLED, the undelivered units for a
    # partially delivered COMPLETED order, else 0.00.
    refunded: Money = Decimal("0.00")
    items: list[OrderLineView]
    created_at: Timestamp
    updated_at: Timestamp


class _Cached(BaseModel):
    def to_cache(self) -> dict[str, object]:
        """The JSON the cache stores (and the invariant checker recomputes): absent keys
        omitted, as the API omits them."""
        return self.model_dump(mode="json", exclude_none=True)


class CachedOrder(_OrderBase, _Cached):
    """The cacheable form: `keys_encrypted` (Fernet tokens) only for a COMPLETED order."""

    keys_encrypted: list[str] | None = None


class OrderView(_OrderBase):
    """One order as the API shows it: `keys` (decrypted) only when COMPLETED."""

    keys: list[str] | None = None


class CachedOrderList(_Cached):
    """All of one user's orders, newest first: the `user:{id}:orders` entry."""

    items: list[CachedOrder]
    page: int
    total: int


class OrderList(BaseModel):
    """`GET /orders`: `{items, page, total}` (CONTRACT §5 lists)."""

    items: list[OrderView]
    page: int
    total: int
