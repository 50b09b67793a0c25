"""The one probe set: is Postgres, the Redis cache, the broker answering, and how fast.

`GET /readyz` (database and broker decide readiness) and `keysync status` (all three)
both call these, so both report a dependency the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from sqlalchemy import Engine, text


@dataclass(frozen=True)
class Probe:
    ok: bool
    latency_ms: float | None = None
    error: str | None = None  # "ExceptionType: first line of its message"

    @property
    def error_type(self) -> str | None:
        return None if self.error is None else self.error.split(":", 1)[0]

    def as_dict(self) -> dict[str, bool | float | str | None]:
        return {"ok": self.ok, "latency_ms": self.latency_ms, "error": self.error}


def _probe(check: Callable[[], object]) -> Probe:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:
        return Probe(False, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                     if str(exc) else type(exc).__name__)
    return Probe(True, round((time.perf_counter() - started) * 1000, 2))


def probe_database(engine: Engine) -> Probe:
    def select_one() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    return _probe(select_one)


def probe_redis(client: redis.Redis) -> Probe:
    """The cache Redis, or the broker's (a RedisBroker's `client`)."""
    return _probe(client.ping)
