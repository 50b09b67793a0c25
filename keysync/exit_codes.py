"""Exit codes of every `keysync` command (CONTRACT §2).

Their own module, importing nothing, so that the CLI and the dev stack it starts share them
without one importing the other.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    # A long-running child of `keysync up` died (like foreman/honcho).
    CHILD_DIED = 1
    # Usage or configuration error; the message names the variable.
    CONFIG = 2
    # Another sync or stock check holds `lock:g2a:sync`.
    LOCKED = 3
    # Finished with errors.
    PARTIAL = 4
    # A dependency (PostgreSQL, Redis, G2A) is unreachable.
    UNREACHABLE = 5
