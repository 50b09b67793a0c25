"""Shop prices and slugs (CONTRACT §4): pure functions, checked exhaustively."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.catalog import shop_price, shop_slug


@settings(max_examples=300, deadline=None)
@given(
    cents=st.integers(min_value=0, max_value=10**9),
    markup=st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False),
)
def test_price_is_decimal_round_half_up(cents: int, markup: Decimal) -> None:
    g2a_price = Decimal(cents) / 100
    price = shop_price(g2a_price, markup)
    exact = g2a_price * (1 + markup / 100)  # exact: at most 4 decimals
    assert price.as_tuple().exponent == -2
    assert abs(price - exact) <= Decimal("0.005")
    # Half up: a remainder of exactly half a cent always goes up, never to even.
    assert (exact - price) < Decimal("0.005")


def test_price_examples() -> None:
    assert shop_price(Decimal("10.00"), Decimal("2")) == Decimal("10.20")
    assert shop_price(Decimal("0.25"), Decimal("2")) == Decimal("0.26")  # 0.255 -> up
    assert shop_price(Decimal("1.25"), Decimal("2")) == Decimal("1.28")  # 1.275 -> up
    assert shop_price(Decimal("0.75"), Decimal("0")) == Decimal("0.75")


def test_slug_is_unique_and_keeps_sim_suffix() -> None:
    assert shop_slug("crimson-empire-42", "42") == "crimson-empire-42"
    assert shop_slug("crimson-empire", "42") == "crimson-empire-42"
    assert shop_slug("crimson-empire", "43") != shop_slug("crimson-empire", "42")
    assert shop_slug("x-5", "15") == "x-5-15"
    long = shop_slug("a" * 400, "7")
    assert len(long) == 300 and long.endswith("-7")
