"""Removal (CONTRACT §6): only after a complete full listing, each absent game confirmed by
a look-up, and the removal guard; against the simulator over HTTP, real Postgres and Redis."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis as redis_lib
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Game, SyncRun
from g2a_sim import SimServer
from services.cache import Cache
from services.cache import keys as cache_keys
from services.catalog import SyncDeps, run_catalog_sync
from tests.services.catalog.support import (
    active_ids,
    cache_games,
    count_games,
    sim_ids,
    sim_post,
    sim_stats,
)


def test_removal_only_after_complete_full_listing(
    sim: SimServer, synced: SyncDeps, session: Session, redis_client: redis_lib.Redis,
    cache: Cache,
) -> None:
    mutated = sim_post(sim, "/_sim/mutate", {"removed": 4, "added": 2})
    gone = cache_games(cache, session, mutated["removed"])

    incremental = run_catalog_sync(synced)
    assert incremental.added == 2 and incremental.removed == 0  # incremental never removes
    assert count_games(session, is_active=False) == 0

    full = run_catalog_sync(synced, full=True)
    assert full.status == "succeeded" and full.removed == 4 and full.added == 0
    for pid in mutated["removed"]:
        game = session.execute(select(Game).where(Game.g2a_product_id == pid)).scalar_one()
        assert (game.is_active, game.in_stock) == (False, False)
    for gid in gone.values():
        assert not redis_client.exists(cache_keys.game(gid))
    assert count_games(session, is_active=True) == 298
    # A removed product that comes back is active again.
    again = run_catalog_sync(synced, full=True)
    assert again.removed == 0 and again.updated == 0


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
    sim: SimServer, synced: SyncDeps, session: Session,
) -> None:
    before = sim_stats(sim)
    mutated = sim_post(sim, "/_sim/mutate", {"removed": 3})
    result = run_catalog_sync(synced, full=True)
    after = sim_stats(sim)
    assert result.status == "succeeded" and result.removed == 3
    assert (result.removal_candidates, result.still_listed) == (3, 0)
    assert after["lookups"] - before["lookups"] == 3  # one look-up per candidate, no more
    assert active_ids(session) == sim_ids(sim)
    assert not active_ids(session) & set(mutated["removed"])


def test_nothing_removed_costs_no_lookup(sim: SimServer, synced: SyncDeps) -> None:
    before = sim_stats(sim)["lookups"]
    again = run_catalog_sync(synced, full=True)
    assert again.removal_candidates == 0 and sim_stats(sim)["lookups"] == before
    assert again.requests == again.pages


def test_a_failing_lookup_keeps_the_product_and_makes_the_run_partial(
    sim: SimServer, synced: SyncDeps, session: Session,
) -> None:
    mutated = sim_post(sim, "/_sim/mutate", {"removed": 3})
    # Every look-up fails (all retries too): G2A never confirmed anything.
    sim_post(sim, "/_sim/faults", {"status": 500, "only": "lookup"})
    doubtful = run_catalog_sync(synced, full=True)
    assert doubtful.status == "partial" and doubtful.errors == 3 and doubtful.removed == 0
    assert "look-up of product" in (doubtful.error_detail or "")
    assert set(mutated["removed"]) <= active_ids(session)
    run = session.get(SyncRun, doubtful.run_id)
    assert run is not None and run.status == "partial" and run.errors == 3

    # One look-up fails (all 5 attempts), the other two answer: only those two go. One
    # fetch thread, so the 5 faults all land on the first look-up.
    httpx.delete(sim.url + "/_sim/faults", timeout=5.0).raise_for_status()  # faults stack
    sim_post(sim, "/_sim/faults", {"status": 500, "only": "lookup", "count": 5})
    mixed = run_catalog_sync(dataclasses.replace(synced, concurrency=1), full=True)
    assert mixed.status == "partial" and mixed.errors == 1 and mixed.removed == 2
    httpx.delete(sim.url + "/_sim/faults", timeout=5.0)
    last = run_catalog_sync(synced, full=True)
    assert last.status == "succeeded" and last.removed == 1
    assert active_ids(session) == sim_ids(sim)


def test_removal_guard_stops_a_mass_removal_before_any_lookup(
    sim: SimServer, synced: SyncDeps, session: Session,
) -> None:
    sim_post(sim, "/_sim/mutate", {"removed": 31})  # 31 of 300: just over 10 %
    before = sim_stats(sim)["lookups"]
    guarded = run_catalog_sync(synced, full=True)
    assert guarded.status == "partial" and guarded.removal_guard
    assert guarded.removed == 0 and guarded.removal_candidates == 31
    assert sim_stats(sim)["lookups"] == before  # decided before spending look-ups
    assert count_games(session, is_active=True) == 300
    run = session.get(SyncRun, guarded.run_id)
    assert run is not None and run.status == "partial"
    assert (run.error_detail or "").startswith("removal guard: 31 of 300 active games")
    assert "--allow-mass-removal" in (run.error_detail or "")

    lifted = run_catalog_sync(synced, full=True, allow_mass_removal=True)
    assert lifted.status == "succeeded" and lifted.removed == 31 and not lifted.removal_guard
    assert active_ids(session) == sim_ids(sim)


def test_removal_guard_threshold_is_strictly_more_than_the_percentage(
    sim: SimServer, synced: SyncDeps,
) -> None:
    sim_post(sim, "/_sim/mutate", {"removed": 30})  # exactly 10 %: allowed
    assert run_catalog_sync(synced, full=True).removed == 30
    sim_post(sim, "/_sim/mutate", {"removed": 1})
    strict = dataclasses.replace(synced, max_removal_percent=Decimal("0"))
    assert run_catalog_sync(strict, full=True).removal_guard  # 0 %: any removal is guarded


def test_empty_listing_deactivates_nothing(
    sim: SimServer, synced: SyncDeps, session: Session,
) -> None:
    sim_post(sim, "/_sim/faults", {"empty_listing": True})
    result = run_catalog_sync(synced, full=True)
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
