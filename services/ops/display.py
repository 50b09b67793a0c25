"""How operator views write numbers, shared by `keysync status` and the console so both
show the same figure the same way."""

from __future__ import annotations


def number_text(value: object) -> str:
    """`1,234`, `12.5`, `3` (a whole float loses its `.0`), `-` when unknown."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if value % 1 else f"{int(value):,}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
