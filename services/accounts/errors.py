"""Refusals of the accounts domain: registration, login, tokens, admin helpers.

Malformed input (an email, a password, a name) is `services.errors.InvalidInput` with a
message saying which rule it broke; only refusals a caller handles on their own get a class.
"""

from __future__ import annotations

from services.errors import DomainError, InvalidInput, TryLater, Unauthorized


class EmailTaken(DomainError):
    """Another account already uses this email (compared case-insensitively)."""

    code = "email_taken"
    message = "An account with this email already exists."


class InvalidCredentials(DomainError):
    """Sign-in refused: no account with this email, or the wrong password. Deliberately
    not saying which of the two was wrong (nor, by timing, whether the account exists)."""

    code = "invalid_credentials"
    message = "Email or password is incorrect."


class InvalidToken(Unauthorized):
    """Not a valid, unexpired HS256 token of ours (the reason stays in `__cause__`)."""

    message = "Invalid or expired token."


class UserNotFound(DomainError):
    """No account with this email, for a change to one account (a top-up, an admin
    grant); the message names the email as normalised."""

    code = "user_not_found"


class InvalidAmount(InvalidInput, ValueError):
    """A money amount that is not a finite, positive, 2-decimal numeric(12,2) value."""


class LoginRateLimited(TryLater):
    """Too many sign-in attempts for this email or from this client address (CONTRACT §5)."""

    code = "rate_limited"
    message = "Too many sign-in attempts; try again later."


class PasswordHashBusy(TryLater):
    """Every password-hashing slot of this process stayed busy for the whole short wait."""

    code = "busy"
    message = "The server is busy; try again shortly."
