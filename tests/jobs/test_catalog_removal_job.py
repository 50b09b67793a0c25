"""`catalog_sync` carries `allow_mass_removal` for its one message, on the real broker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dramatiq
import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Game, SyncRun
from g2a_sim import SimServer


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(products=100, seed=4, rate_limit_per_min=0) as server:
        yield server


def _runs(session: Session) -> list[tuple[str, str, int, bool]]:
    session.expire_all()
    return [(r.kind, r.status, r.removed, (r.error_detail or "").startswith("removal guard:"))
            for r in session.scalars(select(SyncRun).order_by(SyncRun.started_at))]


def _run(broker: Any, worker: dramatiq.Worker, *args: Any, **kwargs: Any) -> None:
    from jobs.catalog import catalog_sync

    catalog_sync.send(*args, **kwargs)
    broker.join(catalog_sync.queue_name, timeout=60_000)
    worker.join()


def test_actor_guard_then_allowed_mass_removal(g2a_worker: dramatiq.Worker, broker: Any,
                                               sim: SimServer, session: Session) -> None:
    _run(broker, g2a_worker, True)
    httpx.post(sim.url + "/_sim/mutate", json={"removed": 20}).raise_for_status()
    _run(broker, g2a_worker, True)  # the scheduler's message: guarded
    _run(broker, g2a_worker, True, allow_mass_removal=True)  # the operator's one run
    # An incremental message asking for it removes nothing (only full syncs remove).
    _run(broker, g2a_worker, False, allow_mass_removal=True)
    assert _runs(session) == [("full", "succeeded", 0, False), ("full", "partial", 0, True),
                              ("full", "succeeded", 20, False),
                              ("incremental", "succeeded", 0, False)]
    active = session.scalars(select(Game.g2a_product_id).where(Game.is_active)).all()
    assert len(active) == 80
