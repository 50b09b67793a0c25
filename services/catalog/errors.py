"""Errors of the catalog sync and stock check."""

from __future__ import annotations


class LockHeld(Exception):
    """Another catalog sync or stock check holds `lock:g2a:sync`."""

    def __init__(self, holder: str | None) -> None:
        super().__init__("another sync holds lock:g2a:sync")
        self.holder = holder
