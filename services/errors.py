"""The base of every refusal a service reports to its caller.

A `DomainError` says what went wrong in the domain's words: a stable machine `code` (the
error codes of CONTRACT §5, which clients key on) and a human `message`. It says nothing
about transport: the HTTP status (and any header such as `Retry-After`) is decided in one
place, `web/errors.py`, and the CLI maps the same errors to its exit codes.

Each domain declares its errors in `services/<domain>/errors.py`, one subclass per refusal
the caller may act on differently.
"""

from __future__ import annotations


class DomainError(Exception):
    """A refusal with a stable `code` and a human `message`; never an HTTP status.

    Subclasses set `code` (and usually `message`) as class attributes. A caller that
    reports the same refusal under another established code (a missing resource in a path
    is the generic `not_found`, the same missing game in a body is `game_not_found`) passes
    `code=` rather than growing a subclass per wording.
    """

    code: str = "domain_error"
    message: str = "The request was refused."

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        if message is not None:
            self.message = message
        if code is not None:
            self.code = code
        super().__init__(self.message)

    def details(self) -> dict[str, str]:
        """Extra machine-readable fields of the error body, beside `code` and `message`
        (e.g. `current_total` of `price_changed`); none by default."""
        return {}


class InvalidInput(DomainError):
    """Input the service refuses whatever the state (a malformed email, a bad amount): the
    caller must change the request, not retry it."""

    code = "invalid_request"
    message = "The request is invalid."


class Unauthorized(DomainError):
    """The caller's identity is missing, malformed, or not (or no longer) valid. Shared:
    accounts issue identities, and every domain that acts for an owner checks them."""

    code = "unauthorized"
    message = "Authentication required."


class Forbidden(DomainError):
    """The caller is known but may not do this (a signed-in user who is not an admin, on
    the operations console)."""

    code = "forbidden"
    message = "You may not do this."


class TryLater(DomainError):
    """A refusal that lifts by itself (a rate limit, a busy resource): `retry_after_s` says
    when to try again (the web layer sends it as `Retry-After`)."""

    def __init__(self, retry_after_s: int, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, retry_after_s)
