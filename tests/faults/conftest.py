"""Fixtures of the fault suite: the simulator, and Redis / Postgres
servers of our own that a test may stop and start again (the session's shared servers
must stay up for every other test)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from sqlalchemy import text

from g2a_sim.server import SimServer
from keysync.embedded import EmbeddedPostgres, EmbeddedRedis
from keysync.resources import Resources
from tests.conftest import TABLES
from worker.broker import create_broker


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(products=200, seed=8, rate_limit_per_min=0) as server:
        yield server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis this test may stop and restart; append-only, so data survives a restart."""
    server = EmbeddedRedis(tmp_path / "own-redis", persist=True).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis_client(own_redis: EmbeddedRedis) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(own_redis.url, socket_connect_timeout=1)
    yield client
    client.close()


@pytest.fixture
def make_resources(settings: Any, own_redis: EmbeddedRedis) -> Iterator[Callable[[], Resources]]:
    """Resources of a process (web or CLI) using `own_redis` as cache, locks and broker;
    each call is one more process (one started after an outage has a closed breaker)."""
    built: list[Resources] = []

    def make() -> Resources:
        broker = create_broker(own_redis.url)
        res = Resources.build(
            settings.model_copy(update={"redis_url": own_redis.url,
                                        "broker_url": own_redis.url}), broker)
        built.append(res)
        return res

    yield make
    for res in built:
        res.close()
        res.broker.client.close()


@pytest.fixture
def own_resources(make_resources: Callable[[], Resources]) -> Resources:
    return make_resources()


@pytest.fixture(scope="session")
def _own_pg_server() -> Iterator[EmbeddedPostgres]:
    from db.migrate import upgrade

    data = Path(tempfile.mkdtemp(prefix="keysync-own-pg-"))
    os.chmod(data, 0o755)  # entered by the postgres user when we run as root
    server = EmbeddedPostgres(data / "pg").start()
    upgrade(server.url)
    yield server
    server.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def own_pg(_own_pg_server: EmbeddedPostgres) -> EmbeddedPostgres:
    """A migrated Postgres this test may stop and restart; emptied before each test."""
    from sqlalchemy import create_engine

    if _own_pg_server.process is None:  # a previous test left it stopped
        _own_pg_server.start()
    engine = create_engine(_own_pg_server.url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    finally:
        engine.dispose()
    return _own_pg_server
