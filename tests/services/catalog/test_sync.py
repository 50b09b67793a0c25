"""Catalog sync against real Postgres, Redis and the G2A simulator over HTTP."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis as redis_lib
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from db.models import Game, SyncRun
from g2a_sim import DEFAULT_API_HASH, DEFAULT_API_SECRET, DEFAULT_EMAIL, SimServer
from services.cache import Cache
from services.cache import keys as cache_keys
from services.catalog.sync import (
    INCREMENTAL_OVERLAP,
    SYNC_PROGRESS,
    LockHeld,
    SyncDeps,
    run_catalog_sync,
    shop_price,
    shop_slug,
)
from services.g2a import G2AClient, RateLimiter
from services.locks import SYNC_LOCK
from tests.helpers import wait_until

MARKUP = Decimal("2")
FAST = 600_000  # requests/min: the limiter is exercised but never waits in tests


@pytest.fixture
def make_deps(
    sessions: sessionmaker[Session], redis_client: redis_lib.Redis, cache: Cache
) -> Iterator[Callable[..., SyncDeps]]:
    opened: list[httpx.Client] = []

    def make(sim: SimServer, **overrides: Any) -> SyncDeps:
        http = httpx.Client(base_url=sim.url, timeout=5.0)
        opened.append(http)
        client = G2AClient(
            http, email=DEFAULT_EMAIL, api_hash=DEFAULT_API_HASH, api_secret=DEFAULT_API_SECRET,
            rate_limiter=RateLimiter(redis_client, FAST), base_wait_s=0.01, max_wait_s=0.05,
        )
        deps = SyncDeps(sessions=sessions, redis=redis_client, cache=cache, client=client,
                        markup_percent=MARKUP)
        return dataclasses.replace(deps, **overrides)

    yield make
    for http in opened:
        http.close()


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(products=300, seed=11, rate_limit_per_min=0) as server:
        yield server


def sim_post(sim: SimServer, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(sim.url + path, json=body, timeout=5.0)
    response.raise_for_status()
    return response.json()


def sim_stats(sim: SimServer) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(sim.url + "/_sim/stats", timeout=5.0).json()
    return data


def game_ids(session: Session, product_ids: list[str]) -> dict[str, Any]:
    rows = session.execute(
        select(Game.g2a_product_id, Game.id).where(Game.g2a_product_id.in_(product_ids))
    ).all()
    return {pid: gid for pid, gid in rows}


def count_games(session: Session, **where: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(Game).filter_by(**where)) or 0)


def row_versions(session: Session) -> str:
    """Fingerprint of every games row version: any INSERT or UPDATE changes some xmin."""
    value = session.execute(
        text("SELECT md5(string_agg(id::text || ':' || xmin::text, ',' ORDER BY id)) FROM games")
    ).scalar_one()
    session.rollback()
    return str(value)


# -- pure functions ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    cents=st.integers(min_value=0, max_value=10**9),
    markup=st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False),
)
def test_price_is_decimal_round_half_up(cents: int, markup: Decimal) -> None:
    g2a_price = Decimal(cents) / 100
    price = shop_price(g2a_price, markup)
    exact = g2a_price * (1 + markup / 100)  # exact: at most 4 decimals
    assert price.as_tuple().exponent == -2
    assert abs(price - exact) <= Decimal("0.005")
    # Half up: a remainder of exactly half a cent always goes up, never to even.
    assert (exact - price) < Decimal("0.005")


def test_price_examples() -> None:
    assert shop_price(Decimal("10.00"), Decimal("2")) == Decimal("10.20")
    assert shop_price(Decimal("0.25"), Decimal("2")) == Decimal("0.26")  # 0.255 -> up
    assert shop_price(Decimal("1.25"), Decimal("2")) == Decimal("1.28")  # 1.275 -> up
    assert shop_price(Decimal("0.75"), Decimal("0")) == Decimal("0.75")


def test_slug_is_unique_and_keeps_sim_suffix() -> None:
    assert shop_slug("crimson-empire-42", "42") == "crimson-empire-42"
    assert shop_slug("crimson-empire", "42") == "crimson-empire-42"
    assert shop_slug("crimson-empire", "43") != shop_slug("crimson-empire", "42")
    assert shop_slug("x-5", "15") == "x-5-15"
    long = shop_slug("a" * 400, "7")
    assert len(long) == 300 and long.endswith("-7")


# -- full sync --------------------------------------------------------------------------------


def test_first_full_sync_adds_every_product(sim: SimServer, make_deps: Any, session: Session,
                                            redis_client: redis_lib.Redis) -> None:
    result = run_catalog_sync(make_deps(sim), full=True)
    assert (result.status, result.kind) == ("succeeded", "full")
    assert result.added == 300 and result.updated == 0 and result.removed == 0
    assert result.errors == 0 and result.pages >= 15 and result.requests >= result.pages
    assert count_games(session) == 300
    # Out-of-stock products are listed (includeOutOfStock=true) and stored as such.
    oos = [p for p in sim.state.products.values() if p.qty == 0]
    assert oos and count_games(session, in_stock=False, is_active=True) == len(oos)
    product = next(iter(sim.state.products.values()))
    game = session.execute(
        select(Game).where(Game.g2a_product_id == str(product.id))
    ).scalar_one()
    g2a_cents = product.retail_min_price if product.retail_min_price is not None \
        else product.min_price
    assert game.g2a_price == Decimal(g2a_cents) / 100
    assert game.price == shop_price(Decimal(g2a_cents) / 100, MARKUP)
    assert game.slug == product.slug and game.g2a_qty == product.qty
    run = session.get(SyncRun, result.run_id)
    assert run is not None and run.status == "succeeded" and run.added == 300
    assert run.fence_token == result.fence_token and run.finished_at is not None
    progress = {k.decode(): v.decode() for k, v in redis_client.hgetall(SYNC_PROGRESS).items()}
    assert progress["run_id"] == result.run_id and progress["status"] == "succeeded"
    assert progress["finished"] == "1"


def test_noop_resync_writes_nothing_and_invalidates_nothing(
    sim: SimServer, make_deps: Any, session: Session, redis_client: redis_lib.Redis,
    cache: Cache,
) -> None:
    deps = make_deps(sim)
    run_catalog_sync(deps, full=True)
    ids = list(game_ids(session, [str(p) for p in sim.state.ids[:5]]).values())
    for gid in ids:
        cache.set(cache_keys.game(gid), {"cached": True}, cache_keys.GAME_TTL)
    cache.set(cache_keys.games_list({"page": 1}), {"cached": True}, cache_keys.LIST_TTL)
    before = row_versions(session)
    result = run_catalog_sync(deps, full=True)
    assert result.status == "succeeded"
    assert (result.added, result.updated, result.removed, result.unchanged) == (0, 0, 0, 300)
    assert result.invalidated_keys == 0
    assert row_versions(session) == before
    for gid in ids:
        assert redis_client.exists(cache_keys.game(gid))
    assert redis_client.exists(cache_keys.games_list({"page": 1}))


def test_t016_sync_invalidates_exactly_changed_games_and_catalog_patterns(
    sim: SimServer, make_deps: Any, session: Session, redis_client: redis_lib.Redis,
    cache: Cache,
) -> None:
    deps = make_deps(sim)
    run_catalog_sync(deps, full=True)
    all_ids = game_ids(session, [str(p) for p in sim.state.ids])
    for gid in all_ids.values():
        cache.set(cache_keys.game(gid), {"cached": True}, cache_keys.GAME_TTL)
    list_key = cache_keys.games_list({"search": "x"})
    cache.set(list_key, {"cached": True}, cache_keys.LIST_TTL)
    cache.set("catalog:home", {"cached": True}, cache_keys.LIST_TTL)

    mutated = sim_post(sim, "/_sim/mutate", {"changed": 7, "out_of_stock": 3})
    touched = set(mutated["changed"]) | set(mutated["out_of_stock"])
    result = run_catalog_sync(deps, full=False)
    assert result.kind == "incremental" and result.status == "succeeded"
    assert result.updated == len(touched) == 10 and result.added == 0
    for pid, gid in all_ids.items():
        assert redis_client.exists(cache_keys.game(gid)) == (0 if pid in touched else 1), pid
    assert not redis_client.exists(list_key)
    assert not redis_client.exists("catalog:home")
    changed_game = session.execute(
        select(Game).where(Game.g2a_product_id == mutated["out_of_stock"][0])
    ).scalar_one()
    assert changed_game.in_stock is False and changed_game.g2a_qty == 0


def test_incremental_lists_from_last_successful_start_minus_overlap(
    sim: SimServer, make_deps: Any, session: Session,
) -> None:
    deps = make_deps(sim)
    first = run_catalog_sync(deps, full=True)
    first_run = session.get(SyncRun, first.run_id)
    assert first_run is not None
    seen: list[dict[str, Any]] = []
    original = deps.client.list_products

    def spy(**kwargs: Any) -> Any:  # records the real call's arguments, then makes it
        seen.append(kwargs)
        return original(**kwargs)

    deps.client.list_products = spy  # type: ignore[method-assign]
    result = run_catalog_sync(deps)  # incremental by default
    assert result.kind == "incremental" and result.status == "succeeded"
    expected = first_run.started_at - INCREMENTAL_OVERLAP
    assert {call["updated_at_from"] for call in seen} == {expected}
    assert all(call["include_out_of_stock"] is True for call in seen)
    # Nothing was updated after 2024 in the sim, so the incremental listing is one page.
    assert result.pages == 1 and result.updated == 0 and result.unchanged == 0


def test_removal_only_after_complete_full_listing(
    sim: SimServer, make_deps: Any, session: Session, redis_client: redis_lib.Redis,
    cache: Cache,
) -> None:
    deps = make_deps(sim)
    run_catalog_sync(deps, full=True)
    mutated = sim_post(sim, "/_sim/mutate", {"removed": 4, "added": 2})
    gone = game_ids(session, mutated["removed"])
    for gid in gone.values():
        cache.set(cache_keys.game(gid), {"cached": True}, cache_keys.GAME_TTL)

    incremental = run_catalog_sync(deps)
    assert incremental.added == 2 and incremental.removed == 0  # incremental never removes
    assert count_games(session, is_active=False) == 0

    full = run_catalog_sync(deps, full=True)
    assert full.status == "succeeded" and full.removed == 4 and full.added == 0
    for pid in mutated["removed"]:
        game = session.execute(select(Game).where(Game.g2a_product_id == pid)).scalar_one()
        assert (game.is_active, game.in_stock) == (False, False)
    for gid in gone.values():
        assert not redis_client.exists(cache_keys.game(gid))
    assert count_games(session, is_active=True) == 298
    # A removed product that comes back is active again.
    again = run_catalog_sync(deps, full=True)
    assert again.removed == 0 and again.updated == 0


def test_page_failures_make_a_partial_run_that_removes_nothing(
    sim: SimServer, make_deps: Any, session: Session,
) -> None:
    deps = make_deps(sim)
    run_catalog_sync(deps, full=True)
    sim_post(sim, "/_sim/mutate", {"removed": 5})
    # 40 % of listing requests fail with 400, which is not retried: some pages are lost.
    sim_post(sim, "/_sim/faults", {"rate": 0.4, "status": 400, "paths": "/v1/products"})
    result = run_catalog_sync(deps, full=True)
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


def test_full_sync_beyond_listing_cap_finds_every_product(
    make_deps: Any, session: Session,
) -> None:
    with SimServer(products=12_000, seed=3, rate_limit_per_min=0) as big:
        result = run_catalog_sync(make_deps(big, concurrency=8), full=True)
    assert result.status == "succeeded", result.error_detail
    assert result.added == 12_000 == result.products_seen
    assert count_games(session) == 12_000


# -- the lock -----------------------------------------------------------------------------------


def _slow_sim(latency_ms: int) -> SimServer:
    server = SimServer(products=300, seed=11, rate_limit_per_min=0).start()
    sim_post(server, "/_sim/faults", {"rate": 1.0, "latency_ms": latency_ms})
    return server


def test_t017_concurrent_syncs_exactly_one_runs(
    make_deps: Any, sim: SimServer, redis_client: redis_lib.Redis, session: Session,
) -> None:
    slow = _slow_sim(300)
    try:
        outcome: dict[str, Any] = {}
        first = threading.Thread(
            target=lambda: outcome.update(result=run_catalog_sync(make_deps(slow), full=True))
        )
        first.start()
        wait_until(lambda: redis_client.exists(SYNC_LOCK) == 1, 10, "sync lock taken")
        with pytest.raises(LockHeld) as held:
            run_catalog_sync(make_deps(sim), full=True)
        assert held.value.holder
        first.join(timeout=30)
        assert outcome["result"].status == "succeeded"
        assert session.scalar(select(func.count()).select_from(SyncRun)) == 1
    finally:
        slow.stop()


def test_t017_expired_holder_cannot_commit_over_a_newer_run(
    make_deps: Any, sim: SimServer, redis_client: redis_lib.Redis, sessions: Any,
) -> None:
    slow = _slow_sim(1000)
    try:
        outcome: dict[str, Any] = {}
        # A long TTL so the stale holder's renewer does not notice the loss in time: only the
        # fence stands between it and the newer run's data.
        stale_deps = make_deps(slow, lock_ttl_ms=600_000)
        stale = threading.Thread(
            target=lambda: outcome.update(result=run_catalog_sync(stale_deps, full=True))
        )
        stale.start()
        wait_until(lambda: redis_client.exists(SYNC_LOCK) == 1, 10, "sync lock taken")
        redis_client.delete(SYNC_LOCK)  # the lock "expires" while the holder is paused
        mutated = sim_post(sim, "/_sim/mutate", {"changed": 20})
        newer = run_catalog_sync(make_deps(sim), full=True)
        assert newer.status == "succeeded" and newer.fence_token is not None
        stale.join(timeout=60)
        old = outcome["result"]
        assert old.status == "failed" and old.fence_token < newer.fence_token
        assert "token" in (old.error_detail or "")
        assert old.added == 0 and old.updated == 0
        with sessions() as s:
            # The newer run's prices stand; the stale holder (listing the unmutated catalog
            # of its own sim) wrote nothing over them.
            assert s.scalar(select(func.count()).select_from(Game)) == 300
            for pid in mutated["changed"]:
                qty = s.scalar(select(Game.g2a_qty).where(Game.g2a_product_id == pid))
                assert qty == sim.state.products[int(pid)].qty
            runs = {r.fence_token: r.status for r in s.scalars(select(SyncRun))}
            assert runs == {old.fence_token: "failed", newer.fence_token: "succeeded"}
    finally:
        slow.stop()


def test_clock_is_injected_for_run_start(make_deps: Any, sim: SimServer, session: Session) -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    result = run_catalog_sync(make_deps(sim, clock=lambda: when), full=True)
    run = session.get(SyncRun, result.run_id)
    assert run is not None and run.started_at == when
    assert run.finished_at == when and timedelta(0) == run.finished_at - run.started_at


def test_ranges_split_by_price_then_by_update_time() -> None:
    from services.catalog.sync import _Range

    now = datetime(2026, 1, 1, tzinfo=UTC)
    low, high = _Range().split(now) or (None, None)
    assert low == _Range(price_lo=0, price_hi=1000) and high == _Range(price_lo=1001)
    assert _Range(price_lo=1001).split(now) == (
        _Range(price_lo=1001, price_hi=2002), _Range(price_lo=2003))
    assert _Range(price_lo=0, price_hi=1000).split(now) == (
        _Range(price_lo=0, price_hi=500), _Range(price_lo=501, price_hi=1000))
    # One price point over the cap: halves of the update-time window, no gap, no overlap.
    early, late = _Range(price_lo=999, price_hi=999).split(now) or (None, None)
    assert early is not None and late is not None
    assert early.price_lo == late.price_lo == 999 and early.updated_to is not None
    assert late.updated_from == early.updated_to + timedelta(seconds=1)
    second = datetime(2025, 1, 1, tzinfo=UTC)
    assert _Range(price_lo=5, price_hi=5, updated_from=second,
                  updated_to=second + timedelta(seconds=1)).split(now) is None


def test_progress_is_reported_per_page(sim: SimServer, make_deps: Any) -> None:
    seen: list[Any] = []
    result = run_catalog_sync(make_deps(sim), full=True, on_progress=seen.append)
    assert len(seen) == result.pages
    assert [p.pages_done for p in seen] == list(range(1, result.pages + 1))
    assert seen[-1].pages_done == seen[-1].pages_total and seen[-1].products == 300


def test_a_dead_holders_running_row_is_closed_by_the_next_run(
    sim: SimServer, make_deps: Any, session: Session,
) -> None:
    session.add(SyncRun(kind="full", status="running", fence_token=0))
    session.commit()
    result = run_catalog_sync(make_deps(sim), full=True)
    statuses = sorted((r.fence_token, r.status) for r in session.scalars(select(SyncRun)))
    assert statuses == [(0, "failed"), (result.fence_token, "succeeded")]


# -- removal: absence is a candidate, confirmed by a look-up; the removal guard -------------


def active_ids(session: Session) -> set[str]:
    session.expire_all()
    return set(session.scalars(select(Game.g2a_product_id).where(Game.is_active)))


def sim_ids(sim: SimServer) -> set[str]:
    with sim.state.lock:
        return {str(pid) for pid in sim.state.ids}


def test_listing_drift_deactivates_nothing_g2a_still_sells(
    sim: SimServer, make_deps: Any, session: Session,
) -> None:
    """CONTRACT §6: G2A removes a product from an already-read page and adds one at the end
    while we page; `total` stays the same and a product slides across a page boundary
    unseen. The look-up keeps it; the really removed one goes by the next full sync."""
    deps = make_deps(sim, concurrency=1)  # pages in order: exactly one boundary product
    run_catalog_sync(deps, full=True)
    before = sim_stats(sim)
    sim_post(sim, "/_sim/drift", {"after": 3})
    drifted = run_catalog_sync(deps, full=True)
    applied = sim_stats(sim)["drift"]["applied"]
    assert applied is not None, "the drift must have happened during the listing"
    assert drifted.status == "succeeded", drifted.error_detail
    # The listing looked complete and consistent, yet missed the product that slid.
    assert drifted.removal_candidates == drifted.still_listed == 1
    assert drifted.removed == 0 and drifted.added == 1
    lookups = sim_stats(sim)["lookups"] - before["lookups"]
    assert lookups == 1 and drifted.requests == drifted.pages + lookups
    # Everything G2A sells is active, plus the one it removed, which we had already read.
    assert active_ids(session) == sim_ids(sim) | {applied["removed"]}

    nxt = run_catalog_sync(deps, full=True)
    assert nxt.status == "succeeded" and nxt.removed == 1 and nxt.still_listed == 0
    assert active_ids(session) == sim_ids(sim)
    gone = session.execute(
        select(Game).where(Game.g2a_product_id == applied["removed"])
    ).scalar_one()
    assert (gone.is_active, gone.in_stock) == (False, False)


def test_drift_with_concurrent_fetches_never_deactivates_a_listed_product(
    sim: SimServer, make_deps: Any, session: Session,
) -> None:
    deps = make_deps(sim, concurrency=8)
    run_catalog_sync(deps, full=True)
    sim_post(sim, "/_sim/drift", {"after": 2})
    drifted = run_catalog_sync(deps, full=True)
    assert sim_stats(sim)["drift"]["applied"] is not None
    assert drifted.status == "succeeded" and drifted.still_listed >= 1
    assert drifted.removed == 0 and sim_ids(sim) <= active_ids(session)
    run_catalog_sync(deps, full=True)
    assert active_ids(session) == sim_ids(sim)


def test_a_removed_product_is_confirmed_and_removed_in_the_same_run(
    sim: SimServer, make_deps: Any, session: Session,
) -> None:
    deps = make_deps(sim)
    run_catalog_sync(deps, full=True)
    before = sim_stats(sim)
    mutated = sim_post(sim, "/_sim/mutate", {"removed": 3})
    result = run_catalog_sync(deps, full=True)
    after = sim_stats(sim)
    assert result.status == "succeeded" and result.removed == 3
    assert (result.removal_candidates, result.still_listed) == (3, 0)
    assert after["lookups"] - before["lookups"] == 3  # one look-up per candidate, no more
    assert active_ids(session) == sim_ids(sim)
    assert not active_ids(session) & set(mutated["removed"])


def test_nothing_removed_costs_no_lookup(sim: SimServer, make_deps: Any) -> None:
    deps = make_deps(sim)
    run_catalog_sync(deps, full=True)
    before = sim_stats(sim)["lookups"]
    again = run_catalog_sync(deps, full=True)
    assert again.removal_candidates == 0 and sim_stats(sim)["lookups"] == before
    assert again.requests == again.pages


def test_a_failing_lookup_keeps_the_product_and_makes_the_run_partial(
    sim: SimServer, make_deps: Any, session: Session,
) -> None:
    deps = make_deps(sim)
    run_catalog_sync(deps, full=True)
    mutated = sim_post(sim, "/_sim/mutate", {"removed": 3})
    # Every look-up fails (all retries too): G2A never confirmed anything.
    sim_post(sim, "/_sim/faults", {"status": 500, "only": "lookup"})
    doubtful = run_catalog_sync(deps, full=True)
    assert doubtful.status == "partial" and doubtful.errors == 3 and doubtful.removed == 0
    assert "look-up of product" in (doubtful.error_detail or "")
    assert set(mutated["removed"]) <= active_ids(session)
    run = session.get(SyncRun, doubtful.run_id)
    assert run is not None and run.status == "partial" and run.errors == 3

    # One look-up fails (all 5 attempts), the other two answer: only those two go. One
    # fetch thread, so the 5 faults all land on the first look-up.
    sim_post(sim, "/_sim/faults", {"status": 500, "only": "lookup", "count": 5})
    mixed = run_catalog_sync(dataclasses.replace(deps, concurrency=1), full=True)
    assert mixed.status == "partial" and mixed.errors == 1 and mixed.removed == 2
    httpx.delete(sim.url + "/_sim/faults", timeout=5.0)
    last = run_catalog_sync(deps, full=True)
    assert last.status == "succeeded" and last.removed == 1
    assert active_ids(session) == sim_ids(sim)


def test_removal_guard_stops_a_mass_removal_before_any_lookup(
    sim: SimServer, make_deps: Any, session: Session,
) -> None:
    deps = make_deps(sim)
    run_catalog_sync(deps, full=True)
    sim_post(sim, "/_sim/mutate", {"removed": 31})  # 31 of 300: just over 10 %
    before = sim_stats(sim)["lookups"]
    guarded = run_catalog_sync(deps, full=True)
    assert guarded.status == "partial" and guarded.removal_guard
    assert guarded.removed == 0 and guarded.removal_candidates == 31
    assert sim_stats(sim)["lookups"] == before  # decided before spending look-ups
    assert count_games(session, is_active=True) == 300
    run = session.get(SyncRun, guarded.run_id)
    assert run is not None and run.status == "partial"
    assert (run.error_detail or "").startswith("removal guard: 31 of 300 active games")
    assert "--allow-mass-removal" in (run.error_detail or "")

    lifted = run_catalog_sync(deps, full=True, allow_mass_removal=True)
    assert lifted.status == "succeeded" and lifted.removed == 31 and not lifted.removal_guard
    assert active_ids(session) == sim_ids(sim)


def test_removal_guard_threshold_is_strictly_more_than_the_percentage(
    sim: SimServer, make_deps: Any,
) -> None:
    deps = make_deps(sim)
    run_catalog_sync(deps, full=True)
    sim_post(sim, "/_sim/mutate", {"removed": 30})  # exactly 10 %: allowed
    assert run_catalog_sync(deps, full=True).removed == 30
    sim_post(sim, "/_sim/mutate", {"removed": 1})
    strict = dataclasses.replace(deps, max_removal_percent=Decimal("0"))
    assert run_catalog_sync(strict, full=True).removal_guard  # 0 %: any removal is guarded


def test_empty_listing_deactivates_nothing(
    sim: SimServer, make_deps: Any, session: Session,
) -> None:
    deps = make_deps(sim)
    run_catalog_sync(deps, full=True)
    sim_post(sim, "/_sim/faults", {"empty_listing": True})
    result = run_catalog_sync(deps, full=True)
    assert (result.status, result.removal_guard, result.removed) == ("partial", True, 0)
    assert result.removal_candidates == 300 and count_games(session, is_active=True) == 300


def test_first_sync_of_an_empty_catalog_is_not_guarded(sim: SimServer, make_deps: Any) -> None:
    sim_post(sim, "/_sim/faults", {"empty_listing": True})
    result = run_catalog_sync(make_deps(sim), full=True)
    assert (result.status, result.removal_candidates, result.removal_guard) == \
        ("succeeded", 0, False)


def test_allow_mass_removal_is_for_full_syncs_only(sim: SimServer, make_deps: Any) -> None:
    with pytest.raises(ValueError, match="full"):
        run_catalog_sync(make_deps(sim), allow_mass_removal=True)
