"""Distributed locks in Redis with fencing tokens checked in Postgres.

A `RedisLock` is held under a value of its own, `host:pid:random` (so an operator can tell
who holds it; `holder()` shows it without the random part, which could release the lock).
Release and renewal are Lua compare-and-delete / compare-and-extend, so a holder can never
free or extend a lock it lost. While the holder works, a daemon thread renews the lock
every ttl/3.

Expiry can still happen (a long GC pause, a partition). The fencing token defends the
data: every Postgres write made under the lock first calls `check_fence(session, name,
token)` inside its transaction. That advances a row in `lock_fences` only if the token is
not older than the last writer's, so a paused holder that wakes after a newer one took
over is rejected instead of overwriting it.

Tokens never go backwards, even when Redis loses its data
-------------------------------------------------------------
The counter (`fence:{name}`) lives in Redis, the highest token that wrote lives in
Postgres. Redis restarted empty, restored from an old snapshot or flushed would restart
the counter low and fence out every run until it climbed back. A fenced acquire is
therefore three steps, and work starts only after the third:

1. **Issue** (one Lua script, so one atomic step): read the Postgres floor first (the
   token in `lock_fences`), then in Redis `SET NX PX` the lock, raise the counter to
   `floor + FENCE_SEED_MARGIN` if it is *below* the floor (missing counts as 0), `INCR`
   it and return the token (nil when another holder has the lock). There is no moment
   where a holder has the lock but no token yet, so a holder paused between the two can no
   longer come back with a token newer than the real holder's.
2. **Claim**: record the token in `lock_fences`, strictly (`stored < token`), in a
   transaction of its own, before any work. Each token is claimed by at most one holder,
   and claimed tokens only grow. A refused claim means the counter is behind Postgres: the
   holder keeps its lock and issues again from the new floor (bounded attempts).
3. **Verify**: after the claim committed, extend the lock (compare-and-extend). A holder
   whose lock vanished meanwhile (Redis wiped between its issue and its claim) gives up:
   `acquire()` returns False and nothing was written under its token.

Why both a claim and a margin. The dangerous window is a holder that was issued token N
before Redis lost its data but has not written N to Postgres yet: a new acquirer seeded
from the floor could get a token <= N, and the two would then both be admitted. The claim
plus verify makes that *safe* whatever the counter says: a holder works only if its claim
committed while it still held the lock, so any later acquirer takes the lock after that
claim and its own strict claim succeeds only with a larger token (a proof by order of
events that does not depend on the margin; see the tests). The margin keeps it *live*:
without it the stale holder's late claim of N could fence out the real holder's first
run. Unrecorded tokens above the floor exist only for holders paused between issue and
claim (milliseconds, and each needs the lock to expire before the next one is issued), so
1,000 is far more than can pile up, and costs nothing: a bigint with a gap after each
data loss. Seeding only when the counter is behind the floor keeps a healthy counter
untouched; a counter restored from a snapshot that is ahead of the floor but behind an
unclaimed N is the case the claim and verify catch.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import threading
from dataclasses import dataclass, field

import redis
import structlog
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

log = structlog.get_logger(__name__)

SYNC_LOCK = "lock:g2a:sync"
SYNC_FENCE = "fence:g2a:sync"
SCHEDULER_LOCK = "lock:scheduler:leader"

# How far above the Postgres floor a counter that fell behind it restarts (module docstring).
FENCE_SEED_MARGIN = 1_000
# Re-issues after a refused claim before giving up; each one re-reads the floor, so one is
# enough unless another acquirer keeps claiming in between, which the lock itself prevents.
_ISSUE_ATTEMPTS = 5

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lock, fence counter. ARGV: value, ttl_ms, floor, seed (= floor + margin, computed
# in Python: Lua numbers are doubles and would print large seeds as 1e+15), reissue (1 when
# the caller already holds the lock and needs a newer token).
_ISSUE = """
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
elseif held == ARGV[1] and ARGV[5] == '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  return false
end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current == nil or current < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[4])
end
return redis.call('INCR', KEYS[2])
"""

# A hostname cannot contain ':' in practice; if one does, it must not shift the fields.
_HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "unknown"
_VALUE = re.compile(r"^(?P<host>[A-Za-z0-9._-]+):(?P<pid>\d+):(?P<secret>[0-9a-f]{32})$")


def lock_value() -> str:
    """`host:pid:random`: the holder is identifiable; the random part makes it unique."""
    return f"{_HOST}:{os.getpid()}:{secrets.token_hex(16)}"


def holder_label(value: str | bytes | None) -> str | None:
    """Who holds a lock, for logs and operators, without the value that could release it.

    `host:pid:random` shows as `host:pid:` plus the first 8 characters of the random part;
    a value in any other format (another tool, an older keysync) as its first 8 characters.
    """
    if value is None:
        return None
    raw = value.decode(errors="replace") if isinstance(value, bytes) else value
    match = _VALUE.match(raw)
    if match is None:
        return raw[:8]
    return f"{match['host']}:{match['pid']}:{match['secret'][:8]}"


class LockNotAcquired(Exception):
    """Another holder has the lock."""


class FencedOut(Exception):
    """A newer lock holder has already written; this holder's writes must not commit."""


@dataclass
class RedisLock:
    """A renewed Redis lock; with `fence_key` (which needs `sessions`) also a fencing token.

    `fence` is set by `acquire()` once the token is claimed in Postgres.
    """

    client: redis.Redis
    name: str
    ttl_ms: int = 30_000
    fence_key: str | None = None
    sessions: sessionmaker[Session] | None = None
    token: str = field(default_factory=lock_value)
    fence: int | None = None
    _renewer: threading.Thread | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    lost: threading.Event = field(default_factory=threading.Event, repr=False)

    def __post_init__(self) -> None:
        if self.ttl_ms <= 0:
            raise ValueError(f"{self.name}: ttl_ms must be positive, got {self.ttl_ms}")
        if self.fence_key is not None and self.sessions is None:
            # Without Postgres the counter could not be seeded after Redis lost its data.
            raise ValueError(f"{self.name}: a fenced lock needs `sessions` (Postgres)")

    def acquire(self) -> bool:
        """Try once; on success (token claimed, if fenced) start renewing and return True.

        Raises `FencedOut` only if Postgres kept refusing freshly issued tokens, and lets
        Postgres/Redis errors through; in both cases a lock it took is released first.
        """
        if self.fence_key is None:
            if not self.client.set(self.name, self.token, nx=True, px=self.ttl_ms):
                return False
        elif not self._acquire_fenced():
            return False
        self._stop.clear()
        self.lost.clear()
        self._renewer = threading.Thread(
            target=self._renew_loop, name=f"renew {self.name}", daemon=True
        )
        self._renewer.start()
        log.info("lock acquired", lock=self.name, fence=self.fence)
        return True

    def _acquire_fenced(self) -> bool:
        bound = log.bind(lock=self.name, fence_key=self.fence_key)
        taken = False
        try:
            for _ in range(_ISSUE_ATTEMPTS):
                token = self.issue(reissue=taken)
                if token is None:
                    if taken:
                        bound.warning("lock lost while claiming its fence")
                    return False
                taken = True
                if self.claim(token):
                    break
                bound.warning("fence counter behind postgres; issuing again", fence=token)
            else:
                raise FencedOut(f"{self.fence_key}: no token newer than Postgres' was issued")
            if not self.extend():
                # Redis lost the lock between issue and claim (a wipe, or a pause past the
                # TTL): someone may hold it now. Our claim only raised the floor.
                bound.warning("lock lost while claiming its fence", fence=token)
                return False
        except BaseException:
            # Even before `taken`: an error reading the Lua reply may hide that it ran.
            # Compare-and-delete cannot free anyone else's lock.
            self._release_quietly()
            raise
        self.fence = token
        return True

    def issue(self, *, reissue: bool = False) -> int | None:
        """Step 1 of a fenced acquire: take the lock and a token in one Lua call.

        Reads the floor from Postgres first. Returns the token, or None when another holder
        has the lock. With `reissue`, a caller that already holds it gets a newer token.
        """
        if self.fence_key is None or self.sessions is None:
            raise ValueError(f"{self.name}: not a fenced lock")
        floor = fence_floor(self.sessions, self.fence_key)
        issued = self.client.eval(
            _ISSUE, 2, self.name, self.fence_key, self.token, self.ttl_ms,
            floor, floor + FENCE_SEED_MARGIN, "1" if reissue else "0",
        )
        return None if issued is None else int(issued)

    def claim(self, token: int) -> bool:
        """Step 2: record `token` in `lock_fences` before any work, strictly newer than
        what is there. False when that token (or a newer one) is already recorded."""
        if self.fence_key is None or self.sessions is None:
            raise ValueError(f"{self.name}: not a fenced lock")
        with self.sessions() as session, session.begin():
            claimed = session.execute(
                text(
                    "INSERT INTO lock_fences (name, token) VALUES (:name, :token) "
                    "ON CONFLICT (name) DO UPDATE SET token = EXCLUDED.token, "
                    "updated_at = now() WHERE lock_fences.token < EXCLUDED.token "
                    "RETURNING token"
                ),
                {"name": self.fence_key, "token": token},
            ).first()
        return claimed is not None

    def extend(self) -> bool:
        return bool(self.client.eval(_EXTEND, 1, self.name, self.token, self.ttl_ms))

    def release(self) -> bool:
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=2)
        released = bool(self.client.eval(_RELEASE, 1, self.name, self.token))
        log.info("lock released", lock=self.name, released=released)
        return released

    def _release_quietly(self) -> None:
        try:
            self.client.eval(_RELEASE, 1, self.name, self.token)
        except redis.RedisError as exc:
            # The TTL frees it; the error that made us give up is the one to report.
            log.warning("lock release failed", lock=self.name, error=str(exc))

    def holder(self) -> str | None:
        """Who holds the lock now (`holder_label`), or None when it is free."""
        return holder_label(self.client.get(self.name))

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

    def __exit__(self, *exc: object) -> None:
        self.release()


def fence_floor(sessions: sessionmaker[Session], name: str) -> int:
    """The highest token claimed or written under `name` (0 when none yet)."""
    with sessions() as session:
        token = session.execute(
            text("SELECT token FROM lock_fences WHERE name = :name"), {"name": name}
        ).scalar_one_or_none()
    return int(token or 0)


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
        # `fence`, not `token`: the log redaction treats any `token` field as a secret.
        log.error("fenced out: a newer lock holder has written", lock=name, fence=token)
        raise FencedOut(f"{name}: token {token} is older than the last writer's")
