"""Sign-in rate limits: the sliding-window counter in real Redis, its per-process fallback
with Redis really unreachable, and the limits applied by `authenticate`."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis as redis_lib
from argon2 import PasswordHasher
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from keysync.resources import make_redis
from services.accounts import auth
from services.accounts.errors import InvalidCredentials, LoginRateLimited
from services.accounts.passwords import HashSlots
from services.accounts.rate_limit import KEY_PREFIX, LoginLimits, SlidingWindowLimiter
from tests.helpers import wait_until

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


class Clock:
    """A hand-moved monotonic clock for the in-memory fallback's window arithmetic."""

    def __init__(self, start: float = 1_000_040.0) -> None:  # 20 s into a minute
        self.now = start

    def __call__(self) -> float:
        return self.now


def _checks(scope: str, backend: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("keysync_login_rate_checks_total",
                                     {"scope": scope, "backend": backend,
                                      "outcome": outcome}) or 0.0


def test_redis_counts_the_limit_then_refuses_with_the_wait(redis_client: Any,
                                                           redis_url: str) -> None:
    limiter = SlidingWindowLimiter(make_redis(redis_url))
    assert [limiter.hit("email", "ana@example.com", 3) for _ in range(3)] == [0, 0, 0]
    wait = limiter.hit("email", "ana@example.com", 3)
    assert 0 < wait <= 120  # at most this window's rest plus the next one
    # Refused attempts are not counted: hammering does not push the end further away.
    assert all(0 < limiter.hit("email", "ana@example.com", 3) <= wait for _ in range(20))
    assert limiter.hit("email", "bob@example.com", 3) == 0  # identities are separate
    assert limiter.hit("address", "ana@example.com", 3) == 0  # and so are scopes
    key = limiter.key("email", "ana@example.com")
    assert key.startswith(f"{KEY_PREFIX}:email:") and "ana" not in key  # email not stored
    assert redis_client.hget(key, "c") == b"3"
    assert 0 < redis_client.pttl(key) <= 120_000  # gone two windows after the last attempt
    assert not limiter.degraded


def test_every_process_shares_the_redis_counts(redis_url: str) -> None:
    one = SlidingWindowLimiter(make_redis(redis_url))
    two = SlidingWindowLimiter(make_redis(redis_url))
    assert [p.hit("address", "10.0.0.1", 4) for p in (one, two, one, two)] == [0, 0, 0, 0]
    assert one.hit("address", "10.0.0.1", 4) > 0 and two.hit("address", "10.0.0.1", 4) > 0


def test_redis_window_slides_and_attempts_come_back(redis_url: str) -> None:
    limiter = SlidingWindowLimiter(make_redis(redis_url), window_s=0.5)
    assert [limiter.hit("email", "e", 2) for _ in range(2)] == [0, 0]
    wait = limiter.hit("email", "e", 2)
    assert 0 < wait <= 1.0
    wait_until(lambda: limiter.hit("email", "e", 2) == 0, timeout_s=5, what="window slid")


def test_memory_fallback_slides_like_redis() -> None:
    clock = Clock()
    dead = redis_lib.Redis(host="127.0.0.1", port=1)  # nothing listens on port 1
    limiter = SlidingWindowLimiter(dead, clock=clock)
    assert [limiter.hit("email", "e", 10) for _ in range(10)] == [0] * 10
    assert limiter.degraded
    # 10 in this window (20 s in): the next is allowed once 10 * (1 - e/60) + 1 <= 10 in
    # the next window, i.e. 6 s into it: 40 s + 6 s from now.
    assert limiter.hit("email", "e", 10) == pytest.approx(46.0, abs=0.01)
    clock.now += 45.9
    assert limiter.hit("email", "e", 10) > 0
    clock.now += 0.2
    assert limiter.hit("email", "e", 10) == 0
    assert limiter.hit("email", "e", 10) > 0  # the slot freed was one attempt, not ten
    clock.now += 120  # two quiet windows later everything is forgotten
    assert [limiter.hit("email", "e", 10) for _ in range(10)] == [0] * 10


def test_redis_down_keeps_limits_per_process_and_says_so(dead_redis_url: str) -> None:
    limiter = SlidingWindowLimiter(make_redis(dead_redis_url), reset_timeout_s=60)
    before = _checks("address", "memory", "limited")
    with capture_logs() as logs:
        allowed = [limiter.hit("address", "10.0.0.9", 5) for _ in range(5)]
        refused = limiter.hit("address", "10.0.0.9", 5)
    assert allowed == [0] * 5 and refused > 0  # never fails open
    assert _checks("address", "memory", "limited") == before + 1
    alerts = [e for e in logs if e.get("alert") == "login_rate_limit_degraded"]
    assert len(alerts) == 1 and alerts[0]["log_level"] == "error"  # once per outage


def test_limits_of_zero_are_off(redis_url: str) -> None:
    limits = LoginLimits(SlidingWindowLimiter(make_redis(redis_url)),
                         per_email_per_min=0, per_address_per_min=0)
    for _ in range(100):
        limits.check_email("e")
        limits.check_address("a")


# --- applied at sign-in ------------------------------------------------------------------


def _limits(redis_url: str, *, per_email: int, per_address: int) -> LoginLimits:
    return LoginLimits(SlidingWindowLimiter(make_redis(redis_url)),
                       per_email_per_min=per_email, per_address_per_min=per_address)


def _attempt(sessions: Any, limits: LoginLimits, email: str, password: str = "wrong-password",
             address: str = "10.1.1.1") -> str:
    try:
        auth.authenticate(sessions, email=email, password=password, limits=limits,
                          client_address=address, hasher=FAST, slots=HashSlots(1))
    except InvalidCredentials:
        return "401"
    except LoginRateLimited as exc:
        assert 1 <= exc.retry_after_s <= 120
        return "429"
    return "200"


def test_email_limit_counts_every_spelling_and_unknown_emails_alike(sessions: Any,
                                                                    redis_url: str) -> None:
    auth.create_user(sessions, email="Ana@Example.com", password="password1", hasher=FAST)
    limits = _limits(redis_url, per_email=3, per_address=0)
    spellings = ["ana@example.com", " ANA@example.com", "Ana@Example.COM"]
    assert [_attempt(sessions, limits, e) for e in spellings] == ["401"] * 3
    # The right password no longer helps: the fourth attempt is refused before the check.
    assert _attempt(sessions, limits, "ana@EXAMPLE.com", "password1") == "429"
    # An address without an account is limited exactly alike (nothing to tell them apart).
    nobody = f"{uuid.uuid4().hex}@example.com"
    assert [_attempt(sessions, limits, nobody) for _ in range(4)] == ["401"] * 3 + ["429"]
    assert _attempt(sessions, _limits(redis_url, per_email=3, per_address=0),
                    "other@example.com") == "401"


def test_address_limit_is_checked_before_the_email(sessions: Any, redis_url: str,
                                                   redis_client: Any) -> None:
    auth.create_user(sessions, email="ana@example.com", password="password1", hasher=FAST)
    limits = _limits(redis_url, per_email=100, per_address=2)
    assert _attempt(sessions, limits, "a@example.com") == "401"
    assert _attempt(sessions, limits, "ana@example.com", "password1") == "200"
    assert _attempt(sessions, limits, "ana@example.com", "password1") == "429"
    assert _attempt(sessions, limits, "ana@example.com", "password1", "10.2.2.2") == "200"
    # The refused attempt never reached the email count (2 + the last success = 2 keys' c).
    email_key = limits.limiter.key("email", "ana@example.com")
    assert redis_client.hget(email_key, "c") == b"2"
