"""Every way a catalog run can fail leaves a readable `sync_runs.error_detail` (issue 15):
G2A failing, a newer holder fencing the run out, the lock held, Redis gone; and the retry
policy the `catalog_sync` actor applies to failed runs. Real Postgres, Redis, simulator."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis as redis_lib
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import SyncRun
from g2a_sim import SimServer
from services.catalog import (
    FENCED_OUT_DETAIL,
    LOCK_HELD_DETAIL,
    LockHeld,
    RetryPolicy,
    SyncDeps,
    SyncResult,
    record_lock_held,
    run_catalog_sync,
    run_stock_check,
)
from services.catalog.listing import Range
from services.locks import SYNC_FENCE, SYNC_LOCK, RedisLock, lock_value
from tests.helpers import wait_until
from tests.services.catalog.support import sim_post

# What the issue found in error_detail: `_Range(… datetime.datetime(… zoneinfo.ZoneInfo(…`.
REPRS = ("datetime.datetime(", "ZoneInfo(", "Range(", "Decimal(", "Traceback")


def assert_readable(detail: str | None) -> str:
    assert detail, "a failed run must say why"
    for marker in REPRS:
        assert marker not in detail, detail
    assert "\n" not in detail and len(detail) <= 500
    return detail


def rows(session: Session) -> list[SyncRun]:
    session.expire_all()
    return list(session.scalars(select(SyncRun).order_by(SyncRun.started_at)))


def test_ranges_read_as_g2a_filters() -> None:
    assert str(Range()) == "the whole catalog"
    since = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert str(Range(updated_from=since)) == "range updated since 2030-01-02 03:04:05 UTC"
    assert str(Range(price_lo=1001)) == "range minPrice >= 10.01"
    window = Range(price_lo=0, price_hi=1000, updated_from=since,
                   updated_to=since.replace(hour=4))
    assert str(window) == ("range minPrice 0.00..10.00, updated 2030-01-02 03:04:05 UTC.."
                           "2030-01-02 04:04:05 UTC")


def test_g2a_failing_incremental_run_is_recorded_readably(
    synced: SyncDeps, sim: SimServer, session: Session,
) -> None:
    # An incremental listing has an updated_at range: the repr the issue found.
    sim_post(sim, "/_sim/faults", {"status": 500, "only": "listing"})
    failed = run_catalog_sync(synced)
    assert (failed.kind, failed.status, failed.pages) == ("incremental", "failed", 0)
    detail = assert_readable(failed.error_detail)
    assert detail.startswith("page 1 of range updated since 20"), detail
    assert "HTTP 500" in detail
    row = rows(session)[-1]
    assert (str(row.id), row.status, row.error_detail) == (failed.run_id, "failed", detail)
    assert failed.retryable and not failed.fenced_out


def test_fenced_out_run_is_recorded_failed_with_the_reason(
    make_deps: Callable[..., SyncDeps], sim: SimServer, session: Session,
    sessions: sessionmaker[Session], redis_client: redis_lib.Redis,
) -> None:
    sim_post(sim, "/_sim/faults", {"latency_ms": 400, "only": "listing"})
    # A TTL long enough that the stale holder's renewer does not notice: the fence does.
    deps = make_deps(sim, lock_ttl_ms=600_000)
    outcome: dict[str, SyncResult] = {}
    stale = threading.Thread(target=lambda: outcome.update(r=run_catalog_sync(deps, full=True)))
    stale.start()
    wait_until(lambda: any(r.status == "running" for r in rows(session)), 10, "run started")
    # Its lock "expires" while it is paused, and a newer holder takes it and claims a
    # newer fencing token in Postgres: the real code path, not a stand-in.
    redis_client.delete(SYNC_LOCK)
    newer = RedisLock(redis_client, SYNC_LOCK, 30_000, fence_key=SYNC_FENCE, sessions=sessions)
    assert newer.acquire()
    try:
        stale.join(timeout=60)
    finally:
        newer.release()
    result = outcome["r"]
    assert (result.status, result.fenced_out, result.added) == ("failed", True, 0)
    detail = assert_readable(result.error_detail)
    assert detail.startswith(FENCED_OUT_DETAIL) and "token" in detail
    assert result.retryable  # its actor runs it again: the newer run may be a stock check
    [row] = rows(session)
    assert (row.status, row.error_detail, row.fence_token) == \
        ("failed", detail, result.fence_token)


def test_lock_held_is_recorded_once_the_caller_gives_up(
    make_deps: Callable[..., SyncDeps], sim: SimServer, session: Session,
    redis_client: redis_lib.Redis,
) -> None:
    redis_client.set(SYNC_LOCK, lock_value(), px=30_000)
    deps = make_deps(sim)
    with pytest.raises(LockHeld) as held:
        run_stock_check(deps)
    assert rows(session) == []  # a deferral is not a failure: nothing recorded yet
    assert held.value.kind == "stock" and held.value.holder
    recorded = record_lock_held(deps, held.value)
    detail = assert_readable(recorded.error_detail)
    assert detail.startswith(LOCK_HELD_DETAIL)
    assert f"held by {held.value.holder}" in detail
    [row] = rows(session)
    assert (row.kind, row.status, row.fence_token, row.error_detail) == \
        ("stock", "failed", 0, detail)
    assert row.finished_at is not None


def test_redis_down_before_the_run_started_is_recorded(
    make_deps: Callable[..., SyncDeps], sim: SimServer, session: Session, dead_redis_url: str,
) -> None:
    dead = redis_lib.Redis.from_url(dead_redis_url, socket_connect_timeout=0.5)
    with pytest.raises(redis_lib.ConnectionError):
        run_catalog_sync(make_deps(sim, redis=dead), full=True)
    [row] = rows(session)
    assert (row.kind, row.status, row.fence_token) == ("full", "failed", 0)
    assert assert_readable(row.error_detail).startswith("ConnectionError: ")


# -- the retry policy the catalog_sync actor applies ---------------------------------------


def test_default_retry_schedule_fits_in_the_hour() -> None:
    policy = RetryPolicy()
    minutes = [delay / 60_000 for delay in policy.schedule()]
    assert minutes == [1, 2, 4, 8, 15, 15, 15]
    assert sum(minutes) <= 60  # every retry starts within the hour of the first attempt
    assert policy.allows(elapsed_ms=0, delay_ms=60_000)
    assert not policy.allows(elapsed_ms=3_000_000, delay_ms=900_000)


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(min_delay_ms=100, max_delay_ms=1000, window_ms=10_000)
    assert [policy.backoff_ms(n) for n in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]
    assert policy.backoff_ms(10_000) == 1000  # no huge integers on a long failure streak


@pytest.mark.parametrize("kwargs", [
    {"min_delay_ms": 0}, {"min_delay_ms": 10, "max_delay_ms": 5}, {"window_ms": 0},
])
def test_retry_policy_refuses_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_backoff_counts_failures_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        RetryPolicy().backoff_ms(0)
