"""The one validation of account input, used by every caller (API, CLI, scripts).

The request schemas in `services.accounts.schemas` declare the same bounds (from these
constants) so OpenAPI documents them and the API answers its usual 422 before any work;
the service functions check again here, so a caller that skips the schema (the CLI) gets
the same rules and a clear `InvalidInput` message.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from services.accounts.errors import InvalidAmount
from services.errors import InvalidInput

# Deliberately loose (one @, a dot in the domain, no spaces): the welcome email is the
# real check, and stricter patterns reject valid addresses.
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
MAX_EMAIL_LENGTH = 320
MIN_PASSWORD_LENGTH = 8
# argon2 accepts any length; the upper bound only caps the work one request can cause.
MAX_PASSWORD_LENGTH = 1024
MAX_NAME_LENGTH = 200
MAX_BALANCE = Decimal("9999999999.99")  # numeric(12,2)

_EMAIL = re.compile(EMAIL_PATTERN)


def normalise_email(email: str) -> str:
    """Emails are stored as typed minus surrounding spaces; case is Postgres' business."""
    return email.strip()


def check_email(email: str) -> str:
    """The email to store (stripped); InvalidInput when it cannot be an address."""
    email = normalise_email(email)
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(email):
        raise InvalidInput(f"not an email address: {email[:MAX_EMAIL_LENGTH]!r}")
    return email


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    return password


def check_name(name: str) -> str:
    """The display name to store (stripped)."""
    name = name.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"name must be at most {MAX_NAME_LENGTH} characters")
    return name


def parse_amount(value: str | Decimal, *, allow_zero: bool = False) -> Decimal:
    """A money amount: finite, at most 2 decimals, > 0 (or >= 0), within numeric(12,2)."""
    try:
        amount = Decimal(value)
    except (InvalidOperation, ValueError, TypeError):
        raise InvalidAmount(f"not a number: {value!r}") from None
    if not amount.is_finite():
        raise InvalidAmount("amount must be a finite number")
    if amount.as_tuple().exponent < -2:  # type: ignore[operator]
        raise InvalidAmount("amount has more than 2 decimal places")
    if amount < 0 or (amount == 0 and not allow_zero):
        raise InvalidAmount("amount must be positive")
    if amount > MAX_BALANCE:
        raise InvalidAmount(f"amount exceeds {MAX_BALANCE}")
    return amount.quantize(Decimal("0.01"))
