"""Catalog sync runs: full and incremental writes, invalidation, the lock and its fence,
run bookkeeping; against the simulator over HTTP, real Postgres and Redis."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis as redis_lib
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Game, SyncRun
from g2a_sim import SimServer
from services.cache import Cache
from services.cache import keys as cache_keys
from services.catalog import (
    INCREMENTAL_OVERLAP,
    SYNC_PROGRESS,
    LockHeld,
    SyncDeps,
    SyncResult,
    run_catalog_sync,
    shop_price,
)
from services.locks import SYNC_LOCK
from tests.helpers import wait_until
from tests.services.catalog.support import (
    MARKUP,
    cache_games,
    count_games,
    row_versions,
    sim_post,
)


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
    sim: SimServer, synced: SyncDeps, session: Session, redis_client: redis_lib.Redis,
    cache: Cache,
) -> None:
    ids = cache_games(cache, session, [str(p) for p in sim.state.ids[:5]]).values()
    cache.set(cache_keys.games_list({"page": 1}), {"cached": True}, cache_keys.LIST_TTL)
    before = row_versions(session)
    result = run_catalog_sync(synced, full=True)
    assert result.status == "succeeded"
    assert (result.added, result.updated, result.removed, result.unchanged) == (0, 0, 0, 300)
    assert result.invalidated_keys == 0
    assert row_versions(session) == before
    for gid in ids:
        assert redis_client.exists(cache_keys.game(gid))
    assert redis_client.exists(cache_keys.games_list({"page": 1}))


def test_t016_sync_invalidates_exactly_changed_games_and_catalog_patterns(
    sim: SimServer, synced: SyncDeps, session: Session, redis_client: redis_lib.Redis,
    cache: Cache,
) -> None:
    all_ids = cache_games(cache, session, [str(p) for p in sim.state.ids])
    list_key = cache_keys.games_list({"search": "x"})
    cache.set(list_key, {"cached": True}, cache_keys.LIST_TTL)
    cache.set("catalog:home", {"cached": True}, cache_keys.LIST_TTL)

    mutated = sim_post(sim, "/_sim/mutate", {"changed": 7, "out_of_stock": 3})
    touched = set(mutated["changed"]) | set(mutated["out_of_stock"])
    result = run_catalog_sync(synced, full=False)
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


@contextmanager
def _slow_sim(latency_ms: int) -> Iterator[SimServer]:
    with SimServer(products=300, seed=11, rate_limit_per_min=0) as server:
        sim_post(server, "/_sim/faults", {"rate": 1.0, "latency_ms": latency_ms})
        yield server


def _holding_sync(
    deps: SyncDeps, redis_client: redis_lib.Redis,
) -> tuple[threading.Thread, dict[str, SyncResult]]:
    """A full sync in a thread, returned once it holds the sync lock, with the dict its
    result lands in (`"result"`)."""
    outcome: dict[str, SyncResult] = {}
    thread = threading.Thread(
        target=lambda: outcome.update(result=run_catalog_sync(deps, full=True)))
    thread.start()
    wait_until(lambda: redis_client.exists(SYNC_LOCK) == 1, 10, "sync lock taken")
    return thread, outcome


def test_t017_concurrent_syncs_exactly_one_runs(
    make_deps: Any, sim: SimServer, redis_client: redis_lib.Redis, session: Session,
) -> None:
    with _slow_sim(300) as slow:
        first, outcome = _holding_sync(make_deps(slow), redis_client)
        with pytest.raises(LockHeld) as held:
            run_catalog_sync(make_deps(sim), full=True)
        assert held.value.holder
        first.join(timeout=30)
    assert outcome["result"].status == "succeeded"
    assert session.scalar(select(func.count()).select_from(SyncRun)) == 1


def test_t017_expired_holder_cannot_commit_over_a_newer_run(
    make_deps: Any, sim: SimServer, redis_client: redis_lib.Redis, sessions: Any,
) -> None:
    with _slow_sim(1000) as slow:
        # A long TTL so the stale holder's renewer does not notice the loss in time: only
        # the fence stands between it and the newer run's data.
        stale, outcome = _holding_sync(make_deps(slow, lock_ttl_ms=600_000), redis_client)
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


def test_clock_is_injected_for_run_start(make_deps: Any, sim: SimServer, session: Session) -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    result = run_catalog_sync(make_deps(sim, clock=lambda: when), full=True)
    run = session.get(SyncRun, result.run_id)
    assert run is not None and run.started_at == when
    assert run.finished_at == when and timedelta(0) == run.finished_at - run.started_at


def test_a_dead_holders_running_row_is_closed_by_the_next_run(
    sim: SimServer, make_deps: Any, session: Session,
) -> None:
    session.add(SyncRun(kind="full", status="running", fence_token=0))
    session.commit()
    result = run_catalog_sync(make_deps(sim), full=True)
    statuses = sorted((r.fence_token, r.status) for r in session.scalars(select(SyncRun)))
    assert statuses == [(0, "failed"), (result.fence_token, "succeeded")]
