"""Refusals of a purchase or an order read (CONTRACT §5 codes; HTTP status in web/errors.py).

A game that cannot be bought is `services.games.errors.GameUnavailable`, the one the cart
and the wishlist raise too.
"""

from __future__ import annotations

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
