"""Refusals of a purchase or an order read (CONTRACT §5 codes; HTTP status in web/errors.py).

A game that cannot be bought is `services.games.errors.GameUnavailable`, the one the cart
and the wishlist raise too.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from services.errors import DomainError


class OrderError(DomainError):
    """Any refusal of the orders domain; nothing was written."""

    code = "order_error"


class EmptyOrder(OrderError):
    """No items: an empty cart, or a line with a quantity that is not positive."""

    code = "empty_order"


class InsufficientBalance(OrderError):
    """The order total is above the user's balance."""

    code = "insufficient_balance"


class OrderNotFound(OrderError):
    """No such order for this user (another user's order is reported the same way, so ids
    cannot be probed), or the buying user no longer exists."""

    code = "not_found"


class InvalidQuantity(OrderError):
    """A game's quantity, after merging duplicate lines, is outside 1..MAX_UNITS_PER_GAME."""

    code = "invalid_quantity"


class InsufficientStock(OrderError):
    """More units of a game than G2A lists (`games.g2a_qty` from the last sync/stock check):
    buying them would pay G2A for keys that cannot all be delivered."""

    code = "insufficient_stock"

    def __init__(self, game_id: uuid.UUID, requested: int, available: int) -> None:
        super().__init__(
            f"game {game_id}: {requested} requested, {available} available"
        )
        self.game_id = game_id
        self.requested = requested
        self.available = available

    def details(self) -> dict[str, str]:
        return {"game_id": str(self.game_id), "requested": str(self.requested),
                "available": str(self.available)}


class PriceChanged(OrderError):
    """The order's total at current prices is not the `expected_total` the customer saw."""

    code = "price_changed"

    def __init__(self, expected_total: Decimal, current_total: Decimal) -> None:
        super().__init__(
            f"prices changed: the order now costs {current_total}, not {expected_total}"
        )
        self.expected_total = expected_total
        self.current_total = current_total

    def details(self) -> dict[str, str]:
        return {"current_total": str(self.current_total),
                "expected_total": str(self.expected_total)}
