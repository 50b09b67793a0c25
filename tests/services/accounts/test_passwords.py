"""Password hashing slots: at most `size` hashes at once, a bounded wait, a bounded queue."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from argon2 import PasswordHasher

from services.accounts import auth
from services.accounts.errors import InvalidCredentials, PasswordHashBusy
from services.accounts.passwords import (
    HASH_SLOTS,
    HashSlots,
    hash_password,
    process_cores,
    verify_password,
)
from tests.helpers import wait_until

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def test_one_slot_per_core_by_default() -> None:
    assert HASH_SLOTS.size == process_cores() >= 1
    assert auth.PASSWORD_HASHER.memory_cost == 65536  # why the slots exist: 64 MiB a hash


def _hold(slots: HashSlots, release: threading.Event) -> tuple[threading.Thread,
                                                               threading.Event]:
    """A caller whose work takes a slot (or waits for one) and keeps it until `release`."""
    inside = threading.Event()

    def work() -> None:
        inside.set()
        release.wait(10)

    thread = threading.Thread(target=slots.run, args=(work,))
    thread.start()
    return thread, inside


def test_a_busy_slot_makes_the_next_caller_wait_then_refuse() -> None:
    slots = HashSlots(1, wait_s=0.3)
    release = threading.Event()
    holder, inside = _hold(slots, release)
    assert inside.wait(10)
    started = time.monotonic()
    with pytest.raises(PasswordHashBusy) as refused:
        hash_password("password1", hasher=FAST, slots=slots)
    assert time.monotonic() - started >= 0.3  # it did wait the short wait
    assert refused.value.retry_after_s >= 1
    ran: list[str] = []
    with pytest.raises(PasswordHashBusy):
        slots.run(lambda: ran.append("late"))
    release.set()
    holder.join(10)
    assert verify_password(hash_password("password1", hasher=FAST, slots=slots), "password1",
                           hasher=FAST, slots=slots)
    assert ran == [] and slots.waiting == 0  # a refused hash is cancelled, never run later


def test_waiting_callers_are_bounded_and_refused_at_once() -> None:
    slots = HashSlots(1, wait_s=5, max_waiting=1)
    release = threading.Event()
    holder, inside = _hold(slots, release)
    assert inside.wait(10)
    waiter, _ = _hold(slots, release)  # the one allowed to wait
    wait_until(lambda: slots.waiting == 1, what="one waiter")
    started = time.monotonic()
    with pytest.raises(PasswordHashBusy):
        hash_password("password1", hasher=FAST, slots=slots)
    assert time.monotonic() - started < 1  # no wait: the queue was full
    release.set()
    holder.join(10)
    waiter.join(10)
    assert slots.waiting == 0


def test_concurrency_never_exceeds_the_slots() -> None:
    slots = HashSlots(2, wait_s=30)
    inside, peak, lock = 0, 0, threading.Lock()

    class Counting(PasswordHasher):
        def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
            nonlocal inside, peak
            with lock:
                inside += 1
                peak = max(peak, inside)
            try:
                return FAST.hash(password)
            finally:
                with lock:
                    inside -= 1

    counting = Counting()
    nice: list[int] = []
    slots.run(lambda: nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
    assert nice == [10]  # hashing yields the CPU to request handling
    threads = [threading.Thread(target=hash_password, args=("password1",),
                                kwargs={"hasher": counting, "slots": slots}) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert peak == 2


def test_unknown_email_costs_a_hash_in_the_same_slots(sessions: Any) -> None:
    """The dummy check of an unknown email goes through the slots like a real one, so a
    busy process answers both alike (503), and neither runs an extra hash beside them."""
    slots = HashSlots(1, wait_s=0.2)
    auth.create_user(sessions, email="ana@example.com", password="password1", hasher=FAST)
    with pytest.raises(InvalidCredentials):
        auth.authenticate(sessions, email="nobody@example.com", password="password1",
                          hasher=FAST, slots=slots)
    release = threading.Event()
    holder, inside = _hold(slots, release)
    assert inside.wait(10)
    try:
        for email in ("ana@example.com", "nobody@example.com"):
            with pytest.raises(PasswordHashBusy):
                auth.authenticate(sessions, email=email, password="password1", hasher=FAST,
                                  slots=slots)
    finally:
        release.set()
        holder.join(10)
