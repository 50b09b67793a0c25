"""Shop prices and slugs from G2A's (CONTRACT §4): exact in Decimal, unique per product."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal


def round_half_up(value: Decimal, places: int = 2) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def shop_price(g2a_price: Decimal, markup_percent: Decimal) -> Decimal:
    """CONTRACT §4: `round_half_up(g2a_price * (1 + markup/100), 2)`, exact in Decimal."""
    return round_half_up(g2a_price * (1 + markup_percent / 100))


def shop_slug(g2a_slug: str, product_id: str) -> str:
    """Our slug: G2A's, suffixed with the product id unless it already ends with it.

    G2A slugs may collide; every result ends with `-{id}` and numeric ids contain no `-`,
    so the id is recoverable from the slug and two products never share one.
    """
    suffix = f"-{product_id}"
    base = g2a_slug if g2a_slug.endswith(suffix) else g2a_slug + suffix
    if len(base) <= 300:
        return base
    return g2a_slug[: 300 - len(suffix)] + suffix
