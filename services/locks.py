"""Distributed locks in Redis with fencing tokens checked in Postgres.

A `RedisLock` is held under a random token (`SET NX PX`); release and renewal are Lua
compare-and-delete / compare-and-extend, so a holder can never free or extend a lock it
lost. While the holder works, a daemon thread renews the lock every ttl/3.

Expiry can still happen (a long GC pause, a partition). The fencing token defends the
data: acquiring takes `INCR fence:{name}`, and every Postgres write made under the lock
first calls `check_fence(session, name, token)` inside its transaction. That advances a
row in `lock_fences` only if the token is not older than the last writer's, so a paused
holder that wakes after a newer one took over is rejected instead of overwriting it.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog
from sqlalchemy import text
from sqlalchemy.orm import Session

log = structlog.get_logger(__name__)

SYNC_LOCK = "lock:g2a:sync"
SYNC_FENCE = "fence:g2a:sync"
SCHEDULER_LOCK = "lock:scheduler:leader"

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class LockNotAcquired(Exception):
    """Another holder has the lock."""


class FencedOut(Exception):
    """A newer lock holder has already written; this holder's writes must not commit."""


@dataclass
class RedisLock:
    client: redis.Redis
    name: str
    ttl_ms: int = 30_000
    fence_key: str | None = None
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    fence: int | None = None
    _renewer: threading.Thread | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    lost: threading.Event = field(default_factory=threading.Event, repr=False)

    def acquire(self) -> bool:
        """Try once; on success take a fencing token (if configured) and start renewing."""
        if not self.client.set(self.name, self.token, nx=True, px=self.ttl_ms):
            return False
        if self.fence_key is not None:
            self.fence = int(self.client.incr(self.fence_key))
        self._stop.clear()
        self.lost.clear()
        self._renewer = threading.Thread(
            target=self._renew_loop, name=f"renew {self.name}", daemon=True
        )
        self._renewer.start()
        log.info("lock acquired", lock=self.name, fence=self.fence)
        return True

    def extend(self) -> bool:
        return bool(self.client.eval(_EXTEND, 1, self.name, self.token, self.ttl_ms))

    def release(self) -> bool:
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=2)
        released = bool(self.client.eval(_RELEASE, 1, self.name, self.token))
        log.info("lock released", lock=self.name, released=released)
        return released

    def holder(self) -> str | None:
        value = self.client.get(self.name)
        return value.decode() if isinstance(value, bytes) else value

    def _renew_loop(self) -> None:
        interval = self.ttl_ms / 3000
        while not self._stop.wait(interval):
            try:
                if not self.extend():
                    log.error("lock lost while held", lock=self.name, fence=self.fence)
                    self.lost.set()
                    return
            except redis.RedisError as exc:
                # Keep trying: the TTL still protects us for a while, and the fence protects
                # the data if we do lose it.
                log.warning("lock renewal failed", lock=self.name, error=str(exc))

    def __enter__(self) -> RedisLock:
        if not self.acquire():
            raise LockNotAcquired(self.name)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def check_fence(session: Session, name: str, token: int) -> None:
    """Inside the writer's transaction: admit `token` only if no newer holder has written.

    Row-locks the fence row until commit, so concurrent fenced writers serialise and the
    highest token wins for good.
    """
    accepted = session.execute(
        text(
            "INSERT INTO lock_fences (name, token) VALUES (:name, :token) "
            "ON CONFLICT (name) DO UPDATE SET token = EXCLUDED.token, updated_at = now() "
            "WHERE lock_fences.token <= EXCLUDED.token RETURNING token"
        ),
        {"name": name, "token": token},
    ).first()
    if accepted is None:
        log.error("fenced out: a newer lock holder has written", lock=name, token=token)
        raise FencedOut(f"{name}: token {token} is older than the last writer's")
