"""Loaded beside `jobs` by bench/login_migration.py's worker process
(`dramatiq jobs bench._migration_clock`): stamps, in Redis, the wall-clock time each guest
migration finished (after its commit and cache invalidation), keyed by guest session id."""

from __future__ import annotations

import time
from typing import Any

from dramatiq.middleware import Middleware

from jobs import broker

COMMITTED_KEY = "bench:migration_committed"


class CommitClock(Middleware):  # type: ignore[misc]
    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: Any = None) -> None:
        if message.actor_name == "migrate_guest_data" and exception is None:
            stamp = time.time()
            broker.client.hset(COMMITTED_KEY, message.args[0], repr(stamp))


broker.add_middleware(CommitClock())
