"""Commands: users."""

from __future__ import annotations

from keysync.cli import main  # noqa: F401
