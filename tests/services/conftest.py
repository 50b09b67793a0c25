"""Fixtures shared by the service tests: the catalog simulator and sync dependencies.

A module that needs a simulator of another shape defines its own `sim`, which wins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis as redis_lib
from sqlalchemy.orm import Session, sessionmaker

from g2a_sim import DEFAULT_API_HASH, DEFAULT_API_SECRET, DEFAULT_EMAIL, SimServer
from services.cache import Cache
from services.catalog import SyncDeps
from services.g2a import G2AClient, RateLimiter
from tests.services.catalog.support import FAST, MARKUP


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
