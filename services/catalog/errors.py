"""Errors of the catalog sync and stock check, and how a failure reads in `sync_runs`."""

from __future__ import annotations

# `sync_runs.error_detail` prefixes of runs that never listed anything, so status views can
# tell them from runs that did (a lock-held row has fence_token 0: it never held the lock).
LOCK_HELD_DETAIL = "lock held:"
FENCED_OUT_DETAIL = "fenced out:"

# error_detail is read by operators in `keysync status`, the console and the CLI: bounded.
MAX_DETAIL = 500


class LockHeld(Exception):
    """Another catalog sync or stock check holds `lock:g2a:sync`.

    `holder` is the lock's `holder_label` (`host:pid:` and a short prefix of its random
    part), never the value that could release it.
    """

    def __init__(self, holder: str | None, *, kind: str | None = None) -> None:
        super().__init__(lock_held_detail(holder))
        self.holder = holder
        self.kind = kind  # the run that could not start: full, incremental or stock


def lock_held_detail(holder: str | None) -> str:
    who = f"held by {holder}" if holder else "held (its holder just released it)"
    return (f"{LOCK_HELD_DETAIL} lock:g2a:sync is {who}: another catalog sync or stock "
            "check is running, so this run did not start")


def describe_error(exc: BaseException) -> str:
    """One readable line for an exception: its class and the first line of its message.

    Driver errors (psycopg, redis) carry SQL, parameters and links after the first line;
    none of that helps an operator and some of it must not be stored.
    """
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else ""
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return line[:MAX_DETAIL]
