"""Password hashing with bounded cost: argon2id, at most one hash per core at once.

An argon2id hash with the library's defaults (RFC 9106 low-memory profile: 64 MiB, 3
passes, 4 lanes) costs ~64 MiB and tens of milliseconds of CPU. Unbounded, a burst of
logins runs one hash per request thread at once: 60 concurrent logins took a web process
from 110 MiB to 2.3 GiB and its other endpoints (even `/healthz`) to seconds. So every hash
and verify in a process goes through one `HashSlots`:
- at most `size` (the cores this process may run on) hashes run at once, on that many
  dedicated threads, so memory stays near `size * 64 MiB` above the baseline;
- a caller waits at most `wait_s` (2 s) for its hash to start, then gets
  `PasswordHashBusy` (the web layer answers 503 with `Retry-After`);
- at most `max_waiting` hashes wait at once; beyond that the refusal is immediate, so a
  flood cannot park every thread of the web server's pool;
- the hashing threads run at a lower CPU priority (nice 10), so while they saturate the
  cores the event loop and other requests (`/healthz`, the catalog) still get the CPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from prometheus_client import Counter

from services.accounts.errors import PasswordHashBusy

log = structlog.get_logger(__name__)

# argon2id with the library's defaults (RFC 9106 low-memory profile).
PASSWORD_HASHER = PasswordHasher()

T = TypeVar("T")

HASH_WAIT_S = 2.0
# Hashing threads' nice value: request handling (nice 0) gets ~10x their CPU share when
# both want it; an idle server still hashes at full speed.
HASH_NICE = 10
BUSY_RETRY_AFTER_S = 1

HASH_SLOT_OUTCOMES = Counter(
    "keysync_password_hash_slots_total", "Requests for a password-hashing slot", ["outcome"]
)  # granted | timeout | queue_full


def process_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _lower_priority(nice: int) -> None:
    """Make the calling thread (and the lane threads argon2 starts from it) yield the CPU
    to request handling. Linux keeps a nice value per thread; elsewhere this is a no-op."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class HashSlots:
    """`size` hashing threads at a lower CPU priority, with a bounded wait and queue.

    Hashing runs on these threads, not the caller's: the caller waits at most `wait_s` for
    its hash to start (then PasswordHashBusy, and the queued hash is cancelled), and at most
    `max_waiting` hashes wait at once (beyond that the refusal is immediate). At a nice value
    of `nice` the hashes take the CPU only when the web server's own threads do not need it,
    so a login burst slows logins, not every other request.
    """

    def __init__(
        self, size: int | None = None, *, wait_s: float = HASH_WAIT_S,
        max_waiting: int | None = None, nice: int = HASH_NICE,
    ) -> None:
        self.size = size if size is not None else process_cores()
        if self.size < 1:
            raise ValueError("size must be at least 1")
        self.wait_s = wait_s
        # Enough waiters to keep every slot busy for the whole wait at tens of ms per hash;
        # more would only wait to be refused.
        self.max_waiting = max_waiting if max_waiting is not None else self.size * 8
        self._executor = ThreadPoolExecutor(
            self.size, thread_name_prefix="password-hash", initializer=_lower_priority,
            initargs=(nice,),
        )
        self._lock = threading.Lock()
        self.waiting = 0  # submitted, not started

    def run(self, work: Callable[[], T]) -> T:
        """`work()` on a hashing thread; PasswordHashBusy when it cannot start in time."""
        started = threading.Event()

        def job() -> T:
            with self._lock:
                self.waiting -= 1
            started.set()
            return work()

        with self._lock:
            if self.waiting >= self.max_waiting:
                HASH_SLOT_OUTCOMES.labels("queue_full").inc()
                raise PasswordHashBusy(BUSY_RETRY_AFTER_S)
            self.waiting += 1
        future = self._executor.submit(job)
        if not started.wait(self.wait_s) and future.cancel():
            with self._lock:
                self.waiting -= 1
            HASH_SLOT_OUTCOMES.labels("timeout").inc()
            log.warning("no password hashing slot within the wait", wait_s=self.wait_s,
                        slots=self.size)
            raise PasswordHashBusy(BUSY_RETRY_AFTER_S)
        HASH_SLOT_OUTCOMES.labels("granted").inc()
        return future.result()


# One per process: the limit is about this process's cores and memory.
HASH_SLOTS = HashSlots()


def hash_password(
    password: str, *, hasher: PasswordHasher = PASSWORD_HASHER, slots: HashSlots = HASH_SLOTS
) -> str:
    return slots.run(lambda: hasher.hash(password))


def verify_password(
    password_hash: str, password: str, *, hasher: PasswordHasher = PASSWORD_HASHER,
    slots: HashSlots = HASH_SLOTS,
) -> bool:
    def verify() -> bool:
        try:
            return hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return slots.run(verify)


def verify_unknown_user(
    password: str, *, hasher: PasswordHasher = PASSWORD_HASHER, slots: HashSlots = HASH_SLOTS
) -> None:
    """For an email with no account: the same work, in the same slots, as a real check.

    A cheaper path would tell an attacker which emails have accounts (by response time, or
    by which requests get 503 under load); going through the same slots keeps the cost of
    this full-price hash bounded like every other.
    """
    verify_password(_dummy_hash(hasher, slots), password, hasher=hasher, slots=slots)


@functools.cache
def _dummy_hash(hasher: PasswordHasher, slots: HashSlots) -> str:
    # Made with the hasher's own parameters, so verifying against it costs what a real
    # account's check costs.
    return hash_password("keysync-timing-equaliser", hasher=hasher, slots=slots)
