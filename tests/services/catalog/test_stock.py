"""Stock check against real Postgres, Redis and the G2A simulator over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis as redis_lib
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Game, SyncRun
from g2a_sim import SimServer
from services.cache import Cache
from services.cache import keys as cache_keys
from services.catalog import LockHeld, SyncDeps, run_stock_check, shop_price
from services.locks import SYNC_LOCK
from tests.services.catalog.support import MARKUP, cache_games, row_versions, sim_post


def test_t018_stock_check_invalidates_only_games_whose_stock_or_price_changed(
    sim: SimServer, synced: SyncDeps, session: Session, redis_client: redis_lib.Redis,
    cache: Cache,
) -> None:
    ids = cache_games(cache, session, [str(p) for p in sim.state.ids])
    cache.set("catalog:featured", {"cached": True}, cache_keys.LIST_TTL)

    mutated = sim_post(sim, "/_sim/mutate", {"changed": 4, "out_of_stock": 3, "added": 2})
    touched = set(mutated["changed"]) | set(mutated["out_of_stock"])
    result = run_stock_check(synced)
    assert (result.kind, result.status) == ("stock", "succeeded")
    assert result.updated == 7 and result.added == 0 and result.removed == 0
    for pid, gid in ids.items():
        assert redis_client.exists(cache_keys.game(gid)) == (0 if pid in touched else 1), pid
    assert not redis_client.exists("catalog:featured")
    # New products are the sync's business, not the stock check's.
    assert session.scalar(select(func.count()).select_from(Game)) == 300
    for pid in mutated["out_of_stock"]:
        game = session.execute(select(Game).where(Game.g2a_product_id == pid)).scalar_one()
        assert (game.g2a_qty, game.in_stock) == (0, False)
    for pid in mutated["changed"]:
        product = sim.state.products[int(pid)]
        game = session.execute(select(Game).where(Game.g2a_product_id == pid)).scalar_one()
        cents = product.retail_min_price if product.retail_min_price is not None \
            else product.min_price
        assert game.g2a_qty == product.qty and game.in_stock is True
        assert game.price == shop_price(game.g2a_price, MARKUP)
        assert game.g2a_price * 100 == cents


def test_unchanged_stock_writes_and_invalidates_nothing(
    synced: SyncDeps, session: Session, redis_client: redis_lib.Redis,
    cache: Cache,
) -> None:
    cache.set("catalog:featured", {"cached": True}, cache_keys.LIST_TTL)
    before = row_versions(session)
    result = run_stock_check(synced)
    assert result.status == "succeeded" and result.updated == 0 and result.unchanged == 300
    assert result.invalidated_keys == 0 and row_versions(session) == before
    assert redis_client.exists("catalog:featured")


def test_failed_pages_never_invent_stock(
    sim: SimServer, synced: SyncDeps, session: Session,
) -> None:
    sim_post(sim, "/_sim/mutate", {"out_of_stock": 40})
    sim_post(sim, "/_sim/faults", {"rate": 1.0, "status": 400, "paths": "/v1/products"})
    before = row_versions(session)
    failed = run_stock_check(synced)
    assert failed.status == "failed" and failed.updated == 0
    assert row_versions(session) == before  # nothing guessed, nothing zeroed
    httpx.delete(sim.url + "/_sim/faults", timeout=5.0).raise_for_status()
    ok = run_stock_check(synced)
    assert ok.status == "succeeded" and ok.updated == 40
    assert session.scalar(select(func.count()).select_from(SyncRun)) == 3


def test_stock_check_shares_the_sync_lock(
    sim: SimServer, make_deps: Any, redis_client: redis_lib.Redis,
) -> None:
    redis_client.set(SYNC_LOCK, "someone-else", px=10_000)
    with pytest.raises(LockHeld) as held:
        run_stock_check(make_deps(sim))
    assert held.value.holder == "someone-"  # a prefix: the full token could free the lock



def test_partial_stock_check_leaves_unfetched_games_as_they_were(
    sim: SimServer, synced: SyncDeps, session: Session,
) -> None:
    before = {g.g2a_product_id: (g.g2a_qty, g.in_stock) for g in session.scalars(select(Game))}
    mutated = sim_post(sim, "/_sim/mutate", {"out_of_stock": 60})
    sim_post(sim, "/_sim/faults", {"rate": 0.5, "status": 400, "paths": "/v1/products"})
    result = run_stock_check(synced)
    assert result.status == "partial" and 0 < result.updated < 60
    session.expire_all()
    now = {g.g2a_product_id: (g.g2a_qty, g.in_stock) for g in session.scalars(select(Game))}
    for pid in mutated["out_of_stock"]:
        assert now[pid] in (before[pid], (0, False))  # refreshed, or untouched: never guessed
    assert sum(now[pid] == (0, False) for pid in mutated["out_of_stock"]) == result.updated
    assert all(in_stock == (qty > 0) for qty, in_stock in now.values())
