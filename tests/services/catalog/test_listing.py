"""Listing G2A: ranges beyond the cap, failed and retried pages, progress; against the
simulator over HTTP, real Postgres and Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from db.models import SyncRun
from g2a_sim import SimServer
from services.catalog import SyncDeps, run_catalog_sync
from services.catalog.listing import Range
from tests.services.catalog.support import count_games, sim_post, sim_stats


def test_ranges_split_by_price_then_by_update_time() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    low, high = Range().split(now) or (None, None)
    assert low == Range(price_lo=0, price_hi=1000) and high == Range(price_lo=1001)
    assert Range(price_lo=1001).split(now) == (
        Range(price_lo=1001, price_hi=2002), Range(price_lo=2003))
    assert Range(price_lo=0, price_hi=1000).split(now) == (
        Range(price_lo=0, price_hi=500), Range(price_lo=501, price_hi=1000))
    # One price point over the cap: halves of the update-time window, no gap, no overlap.
    early, late = Range(price_lo=999, price_hi=999).split(now) or (None, None)
    assert early is not None and late is not None
    assert early.price_lo == late.price_lo == 999 and early.updated_to is not None
    assert late.updated_from == early.updated_to + timedelta(seconds=1)
    second = datetime(2025, 1, 1, tzinfo=UTC)
    assert Range(price_lo=5, price_hi=5, updated_from=second,
                  updated_to=second + timedelta(seconds=1)).split(now) is None


def test_full_sync_beyond_listing_cap_finds_every_product(
    make_deps: Any, session: Session,
) -> None:
    with SimServer(products=12_000, seed=3, rate_limit_per_min=0) as big:
        result = run_catalog_sync(make_deps(big, concurrency=8), full=True)
    assert result.status == "succeeded", result.error_detail
    assert result.added == 12_000 == result.products_seen
    assert count_games(session) == 12_000


def test_page_failures_make_a_partial_run_that_removes_nothing(
    sim: SimServer, synced: SyncDeps, session: Session,
) -> None:
    sim_post(sim, "/_sim/mutate", {"removed": 5})
    # 40 % of listing requests fail with 400, which is not retried: some pages are lost.
    sim_post(sim, "/_sim/faults", {"rate": 0.4, "status": 400, "paths": "/v1/products"})
    result = run_catalog_sync(synced, full=True)
    assert result.status == "partial" and result.errors > 0
    assert result.removed == 0 and count_games(session, is_active=False) == 0
    run = session.get(SyncRun, result.run_id)
    assert run is not None and run.status == "partial" and run.errors == result.errors
    assert run.error_detail


def test_429_and_5xx_are_retried(sim: SimServer, make_deps: Any, session: Session) -> None:
    sim_post(sim, "/_sim/faults", {"rate": 0.3, "status": 503, "count": 6})
    first = run_catalog_sync(make_deps(sim), full=True)
    assert first.status == "succeeded" and first.added == 300
    sim_post(sim, "/_sim/faults", {"rate": 0.3, "status": 429, "count": 6})
    second = run_catalog_sync(make_deps(sim), full=True)
    assert second.status == "succeeded" and second.unchanged == 300
    assert sim_stats(sim)["faults_injected"] == 12
    assert first.requests > first.pages


def test_g2a_down_fails_the_run_and_writes_nothing(make_deps: Any, session: Session) -> None:
    with SimServer(products=10, rate_limit_per_min=0) as dead:
        deps = make_deps(dead)
    result = run_catalog_sync(deps, full=True)  # the server is stopped now
    assert result.status == "failed" and result.errors == 1 and count_games(session) == 0


def test_progress_is_reported_per_page(sim: SimServer, make_deps: Any) -> None:
    seen: list[Any] = []
    result = run_catalog_sync(make_deps(sim), full=True, on_progress=seen.append)
    assert len(seen) == result.pages
    assert [p.pages_done for p in seen] == list(range(1, result.pages + 1))
    assert seen[-1].pages_done == seen[-1].pages_total and seen[-1].products == 300
