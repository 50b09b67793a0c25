"""The order tests' simulator: a small catalog, no rate limit (see `sim_server`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from g2a_sim.server import SimServer
from tests.order_helpers import sim_server


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with sim_server() as server:
        yield server
