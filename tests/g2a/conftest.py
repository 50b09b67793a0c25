from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from g2a_sim import DEFAULT_API_HASH, DEFAULT_API_SECRET, DEFAULT_EMAIL, SimServer
from services.g2a import G2AClient


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    # Unlimited rate so tests sharing it never trip over each other's request counts.
    with SimServer(products=300, seed=7, rate_limit_per_min=0) as server:
        yield server


@pytest.fixture
def sim_http(sim: SimServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=5.0) as client:
        client.delete("/_sim/faults")
        yield client
        client.delete("/_sim/faults")


@pytest.fixture
def make_g2a() -> Iterator[Callable[..., G2AClient]]:
    """G2AClient factory against a SimServer, with waits short enough for tests."""
    opened: list[httpx.Client] = []

    def make(server: SimServer, *, timeout: float = 5.0, **kwargs: Any) -> G2AClient:
        http = httpx.Client(base_url=server.url, timeout=timeout)
        opened.append(http)
        kwargs.setdefault("max_wait_s", 0.05)
        kwargs.setdefault("base_wait_s", 0.01)
        return G2AClient(
            http, email=DEFAULT_EMAIL, api_hash=DEFAULT_API_HASH, api_secret=DEFAULT_API_SECRET,
            **kwargs,
        )

    yield make
    for http in opened:
        http.close()
