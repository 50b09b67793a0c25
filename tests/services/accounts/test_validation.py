"""Account input is validated by the service itself, whoever calls it (API, CLI, scripts):
one rule per input, refusals as `InvalidInput` with a message fit to show, nothing stored."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select

from db.models import Transaction, User
from services.accounts import auth
from services.accounts.errors import InvalidAmount
from services.accounts.validation import check_email, parse_amount
from services.errors import InvalidInput

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
GOOD = {"email": "ok@example.com", "password": "password1"}


def _stored(session: Any) -> tuple[int, int]:
    with session.begin():
        users = session.scalar(select(func.count()).select_from(User))
        transactions = session.scalar(select(func.count()).select_from(Transaction))
    return int(users or 0), int(transactions or 0)


@pytest.mark.parametrize(("change", "error", "says"), [
    ({"email": "no-at-sign"}, InvalidInput, "not an email address"),
    ({"email": "a@localhost"}, InvalidInput, "not an email address"),
    ({"email": "a b@example.com"}, InvalidInput, "not an email address"),
    ({"email": "a@" + "x" * 320 + ".com"}, InvalidInput, "not an email address"),
    ({"password": "short"}, InvalidInput, "at least 8 characters"),
    ({"password": "x" * 1025}, InvalidInput, "at most 1024 characters"),
    ({"name": "n" * 201}, InvalidInput, "at most 200 characters"),
    ({"balance": "x"}, InvalidAmount, "not a number"),
    ({"balance": "-5"}, InvalidAmount, "must be positive"),
    ({"balance": "1.001"}, InvalidAmount, "2 decimal"),
])
def test_create_user_refuses_bad_input_and_stores_nothing(
    sessions: Any, session: Any, change: dict[str, str], error: type[InvalidInput], says: str
) -> None:
    with pytest.raises(error, match=says) as refused:
        auth.create_user(sessions, **{**GOOD, **change}, hasher=FAST)  # type: ignore[arg-type]
    assert refused.value.code == "invalid_request"
    assert _stored(session) == (0, 0)


def test_register_applies_the_same_rules(sessions: Any, session: Any, broker: Any,
                                         settings: Any) -> None:
    with pytest.raises(InvalidInput, match="at least 8"):
        auth.register(sessions, broker, settings, email="ok@example.com", password="short",
                      hasher=FAST)
    with pytest.raises(InvalidInput):
        auth.register(sessions, broker, settings, email="nope", password="password1",
                      hasher=FAST)
    assert _stored(session) == (0, 0)


def test_amounts_as_typed_are_accepted_and_normalised(sessions: Any, cache: Any) -> None:
    user = auth.create_user(sessions, **GOOD, balance="7.5", hasher=FAST)
    assert user.balance == Decimal("7.50")
    assert auth.top_up(sessions, cache, email="OK@example.com", amount="2").balance == Decimal(
        "9.50")
    with pytest.raises(InvalidAmount, match="must be positive"):
        auth.top_up(sessions, cache, email="ok@example.com", amount="0")


def test_emails_are_stripped_and_keep_their_case() -> None:
    assert check_email("  Ana@Example.com ") == "Ana@Example.com"
    assert parse_amount("0", allow_zero=True) == Decimal("0.00")
