"""Catalog fixtures (the simulator and `make_deps` come from tests/services/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from g2a_sim import SimServer
from services.catalog import SyncDeps, run_catalog_sync


@pytest.fixture
def synced(sim: SimServer, make_deps: Callable[..., SyncDeps]) -> SyncDeps:
    """Deps for `sim` whose whole catalog a first full sync has already written."""
    deps = make_deps(sim)
    first = run_catalog_sync(deps, full=True)
    assert first.status == "succeeded", first.error_detail
    return deps
