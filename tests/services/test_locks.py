"""Redis locks with renewal and Postgres fencing."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError

from services.locks import (
    FENCE_SEED_MARGIN,
    FencedOut,
    LockNotAcquired,
    RedisLock,
    check_fence,
    fence_floor,
    holder_label,
)
from tests.helpers import wait_until


def test_two_holders_never_overlap(redis_client) -> None:
    inside = 0
    overlaps = 0
    guard = threading.Lock()

    def contender() -> None:
        nonlocal inside, overlaps
        for _ in range(30):
            lock = RedisLock(redis_client, "lock:test", ttl_ms=2000)
            if lock.acquire():
                with guard:
                    inside += 1
                    overlaps += inside > 1
                time.sleep(0.002)
                with guard:
                    inside -= 1
                lock.release()

    threads = [threading.Thread(target=contender) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == 0


def test_release_by_non_holder_is_refused(redis_client) -> None:
    holder = RedisLock(redis_client, "lock:test", ttl_ms=5000)
    assert holder.acquire()
    impostor = RedisLock(redis_client, "lock:test", ttl_ms=5000)
    assert not impostor.acquire()
    assert impostor.release() is False
    assert redis_client.get("lock:test").decode() == holder.token
    assert holder.release() is True
    assert redis_client.get("lock:test") is None


def test_context_manager_raises_when_held(redis_client) -> None:
    with RedisLock(redis_client, "lock:test"), pytest.raises(LockNotAcquired):
        RedisLock(redis_client, "lock:test").__enter__()


def test_renewal_keeps_a_long_job_locked(redis_client) -> None:
    lock = RedisLock(redis_client, "lock:test", ttl_ms=300)
    assert lock.acquire()
    time.sleep(1.0)  # more than three TTLs
    assert not RedisLock(redis_client, "lock:test", ttl_ms=300).acquire()
    assert not lock.lost.is_set()
    lock.release()


def test_lost_lock_is_detected(redis_client) -> None:
    lock = RedisLock(redis_client, "lock:test", ttl_ms=300)
    assert lock.acquire()
    redis_client.set("lock:test", "someone-else")
    assert lock.lost.wait(2)
    lock.release()
    assert redis_client.get("lock:test") == b"someone-else"


def test_expired_holder_fenced_write_is_rejected(redis_client, sessions) -> None:
    old = RedisLock(redis_client, "lock:test", ttl_ms=200, fence_key="fence:test",
                    sessions=sessions)
    assert old.acquire()
    old._stop.set()  # simulate a paused holder: its renewals stop
    wait_until(lambda: not redis_client.exists("lock:test"), 5, "the paused holder's expiry")
    new = RedisLock(redis_client, "lock:test", ttl_ms=5000, fence_key="fence:test",
                    sessions=sessions)
    assert new.acquire()
    assert new.fence is not None and old.fence is not None and new.fence > old.fence

    with sessions() as s, s.begin():
        check_fence(s, "fence:test", new.fence)  # the new holder writes first
    with sessions() as s, pytest.raises(FencedOut), s.begin():
        check_fence(s, "fence:test", old.fence)  # the paused holder wakes up: rejected
    with sessions() as s, s.begin():
        check_fence(s, "fence:test", new.fence)  # the current holder may keep writing
    new.release()


# --- fencing tokens that survive Redis data loss ----------------------------------------------
#
# The suite may share one Redis server between pytest workers (TEST_REDIS_URL), so "Redis
# lost its data" is FLUSHDB of this test's db: everything this lock and counter can see.
# tests/faults/test_redis_data_loss.py restarts a real server with its files wiped.

FENCE = "fence:test"


def fenced(redis_client: Any, sessions: Any, ttl_ms: int = 5000) -> RedisLock:
    return RedisLock(redis_client, "lock:test", ttl_ms=ttl_ms, fence_key=FENCE,
                     sessions=sessions)


def recorded(sessions: Any) -> int:
    """The highest token claimed or written under FENCE, as Postgres has it."""
    return fence_floor(sessions, FENCE)


def write(sessions: Any, token: int) -> None:
    """A fenced write, as every write under the sync lock makes it."""
    with sessions() as s, s.begin():
        check_fence(s, FENCE, token)


def run_once(redis_client: Any, sessions: Any) -> int:
    lock = fenced(redis_client, sessions)
    assert lock.acquire()
    assert lock.fence is not None
    write(sessions, lock.fence)
    lock.release()
    return lock.fence


def test_a_fenced_lock_needs_postgres(redis_client: Any) -> None:
    with pytest.raises(ValueError, match="sessions"):
        RedisLock(redis_client, "lock:test", fence_key=FENCE)
    with pytest.raises(ValueError, match="ttl_ms"):
        RedisLock(redis_client, "lock:test", ttl_ms=0)


def test_the_lock_value_names_its_holder_but_holder_hides_the_secret(redis_client: Any) -> None:
    lock = RedisLock(redis_client, "lock:test")
    assert lock.acquire()
    host, pid, secret = redis_client.get("lock:test").decode().split(":")
    assert host == re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64]
    assert pid == str(os.getpid()) and len(secret) == 32
    assert lock.holder() == f"{host}:{pid}:{secret[:8]}"
    assert secret not in (lock.holder() or "")
    # The value is still unique per lock: another process-local lock cannot release it.
    assert RedisLock(redis_client, "lock:test").release() is False
    assert lock.release() is True
    assert lock.holder() is None
    assert holder_label(b"someone-else") == "someone-"  # a value from another tool


def test_tokens_keep_growing_after_redis_is_flushed(redis_client: Any, sessions: Any) -> None:
    tokens = [run_once(redis_client, sessions) for _ in range(3)]
    assert tokens == [1, 2, 3]
    redis_client.flushdb()  # counter and lock gone
    after = fenced(redis_client, sessions)
    assert after.acquire()
    assert after.fence is not None and after.fence > max(tokens)
    assert after.fence == max(tokens) + FENCE_SEED_MARGIN + 1  # seeded above the floor
    assert recorded(sessions) == after.fence  # claimed before any work
    write(sessions, after.fence)  # not FencedOut
    after.release()
    assert run_once(redis_client, sessions) == after.fence + 1  # and on from there


def test_a_counter_restored_from_an_old_snapshot_is_raised(
    redis_client: Any, sessions: Any
) -> None:
    tokens = [run_once(redis_client, sessions) for _ in range(5)]
    redis_client.set(FENCE, 2)  # the snapshot was taken two runs in
    lock = fenced(redis_client, sessions)
    assert lock.acquire()
    assert lock.fence == max(tokens) + FENCE_SEED_MARGIN + 1
    assert recorded(sessions) == lock.fence
    write(sessions, lock.fence)
    lock.release()


def test_a_holder_paused_after_taking_the_lock_cannot_outrank_the_next_holder(
    redis_client: Any, sessions: Any
) -> None:
    """The old interleaving: A's `SET NX`, A paused past its TTL, B's `SET NX` + `INCR`, then
    A's `INCR` gave A the newer token although B held the lock. Now A's lock and token come
    from one Lua call, so the only pause left is after both: A's token is the older one."""
    run_once(redis_client, sessions)
    a = fenced(redis_client, sessions, ttl_ms=100)
    a_token = a.issue()  # A took lock and token ... and pauses (no renewal, no claim)
    assert a_token is not None
    wait_until(lambda: not redis_client.exists("lock:test"), 5, "A's lock expiry")
    b = fenced(redis_client, sessions)
    assert b.acquire()
    assert b.fence is not None and b.fence > a_token
    write(sessions, b.fence)
    assert a.claim(a_token) is False  # A wakes: it cannot even claim, so never starts work
    with pytest.raises(FencedOut):
        write(sessions, a_token)
    write(sessions, b.fence)
    b.release()


def test_redis_wiped_between_issue_and_claim_never_admits_two_holders(
    redis_client: Any, sessions: Any
) -> None:
    """A was issued token N, Redis lost everything before A recorded N, B acquires."""
    run_once(redis_client, sessions)
    a = fenced(redis_client, sessions)
    n = a.issue()
    assert n is not None
    redis_client.flushdb()
    b = fenced(redis_client, sessions)
    assert b.acquire()
    assert b.fence is not None and b.fence > n  # the margin: B is not held back by N
    assert a.claim(n) is False
    write(sessions, b.fence)

    # The other order: A claims N after the wipe but before B comes. The claim succeeds,
    # but A's lock is gone, so A gives up (its verify fails) and B still outranks it.
    b.release()
    a = fenced(redis_client, sessions)
    n = a.issue()
    assert n is not None
    redis_client.flushdb()
    assert a.claim(n) is True
    assert a.extend() is False  # what acquire() checks after the claim: A does no work
    b = fenced(redis_client, sessions)
    assert b.acquire()
    assert b.fence is not None and b.fence > n
    write(sessions, b.fence)
    with pytest.raises(FencedOut):
        write(sessions, n)
    b.release()


def test_a_restored_counter_that_reissues_an_unclaimed_token_admits_one_holder(
    redis_client: Any, sessions: Any
) -> None:
    """No margin helps here: the snapshot's counter is not behind Postgres, only behind a
    token that was issued but not yet claimed. Both holders get the same token; the strict
    claim admits one, and only the one that still holds the lock."""
    floor = run_once(redis_client, sessions)
    a = fenced(redis_client, sessions)
    n = a.issue()
    assert n == floor + 1
    redis_client.delete("lock:test")  # the snapshot predates A's lock ...
    redis_client.set(FENCE, floor)  # ... and A's INCR
    b = fenced(redis_client, sessions)
    assert b.acquire()
    assert b.fence == n  # the same number, but B claimed it first
    assert a.claim(n) is False
    write(sessions, b.fence)
    b.release()


def test_a_refused_claim_issues_a_newer_token(redis_client: Any, sessions: Any) -> None:
    lock = fenced(redis_client, sessions)
    first = lock.issue()
    assert first == 1
    write(sessions, 100)  # something recorded a newer token meanwhile (an older Redis's)
    assert lock.claim(first) is False
    again = lock.issue(reissue=True)  # still our lock: a newer token from the new floor
    assert again == 100 + FENCE_SEED_MARGIN + 1
    assert lock.claim(again) is True
    assert fenced(redis_client, sessions).issue() is None  # and the lock is still ours
    assert lock.release() is True


def test_tokens_strictly_grow_in_lock_order_across_a_wipe(
    redis_client: Any, sessions: Any
) -> None:
    order: list[int] = []
    fenced_out: list[int] = []
    errors: list[BaseException] = []
    guard = threading.Lock()
    wiped = threading.Event()
    deadline = time.monotonic() + 30

    def contender() -> None:
        held = 0
        try:
            while held < 10 and time.monotonic() < deadline:
                lock = fenced(redis_client, sessions, ttl_ms=2000)
                if not lock.acquire():
                    continue
                held += 1
                assert lock.fence is not None
                with guard:
                    order.append(lock.fence)
                    if len(order) == 15:
                        redis_client.flushdb()  # under a live holder
                        wiped.set()
                try:
                    write(sessions, lock.fence)
                except FencedOut:
                    fenced_out.append(lock.fence)
                lock.release()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=contender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert wiped.is_set() and len(order) == 40
    assert all(a < b for a, b in pairwise(order)), order
    # Only the holder whose lock the wipe took may be refused (when the next holder wrote
    # first): that is the fence doing its job. Every other holder's write was admitted.
    assert set(fenced_out) <= {order[14]}, (fenced_out, order)
    assert order[15] > order[14] + FENCE_SEED_MARGIN - 1  # seeded, not restarted at 1
    assert recorded(sessions) == order[-1]


def test_a_postgres_error_while_claiming_frees_the_lock(
    redis_client: Any, sessions: Any
) -> None:
    # lock_fences.name is 100 characters at most: the floor read finds nothing, the claim's
    # insert fails after the lock was taken.
    lock = RedisLock(redis_client, "lock:test", fence_key="fence:" + "x" * 120,
                     sessions=sessions)
    with pytest.raises(DBAPIError):
        lock.acquire()
    assert redis_client.get("lock:test") is None
    other = fenced(redis_client, sessions)
    assert other.acquire()
    other.release()
