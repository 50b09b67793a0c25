"""Redis locks with renewal and Postgres fencing."""

from __future__ import annotations

import threading
import time

import pytest

from services.locks import FencedOut, LockNotAcquired, RedisLock, check_fence


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
    old = RedisLock(redis_client, "lock:test", ttl_ms=200, fence_key="fence:test")
    assert old.acquire()
    old._stop.set()  # simulate a paused holder: its renewals stop
    time.sleep(0.4)
    new = RedisLock(redis_client, "lock:test", ttl_ms=5000, fence_key="fence:test")
    assert new.acquire()
    assert new.fence is not None and old.fence is not None and new.fence > old.fence

    with sessions() as s, s.begin():
        check_fence(s, "fence:test", new.fence)  # the new holder writes first
    with sessions() as s, pytest.raises(FencedOut), s.begin():
        check_fence(s, "fence:test", old.fence)  # the paused holder wakes up: rejected
    with sessions() as s, s.begin():
        check_fence(s, "fence:test", new.fence)  # the current holder may keep writing
    new.release()
