"""Refusals of the operations services (the CLI's exit 2, the console's 422)."""

from __future__ import annotations

from services.errors import InvalidInput


class OpsInputError(InvalidInput):
    """An operator request that cannot be carried out as asked (nothing was changed)."""

    code = "invalid_request"


# The largest page any operator listing returns (CLI `--limit`, console, JSON twins).
MAX_LIMIT = 1000


def check_page(limit: int, offset: int) -> None:
    """Refuse a page no listing serves (nothing is read)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise OpsInputError(f"limit must be 1..{MAX_LIMIT}")
    if offset < 0:
        raise OpsInputError("offset must be >= 0")


class UnknownIds(OpsInputError):
    """Ids that name no dead letter / no webhook event: nothing was changed, so a typo
    never silently retries the wrong set."""

    code = "not_found"

    def __init__(self, what: str, ids: list[str]) -> None:
        shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        super().__init__(f"not {what}: {shown}")
        self.ids = ids
