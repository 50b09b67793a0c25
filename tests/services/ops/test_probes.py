"""The one probe set behind `/readyz` and `keysync status`, against live and dead servers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib
from sqlalchemy import Engine

from db.session import make_engine
from services.ops.probes import probe_database, probe_redis


@pytest.fixture
def dead_engine(dead_redis_url: str) -> Iterator[Engine]:
    port = dead_redis_url.rsplit(":", 1)[1].split("/")[0]
    engine = make_engine(f"postgresql+psycopg://u@127.0.0.1:{port}/x", pool_size=1)
    yield engine
    engine.dispose()


def test_live_dependencies_answer_with_a_latency(engine: Engine, redis_client: Any) -> None:
    for probe in (probe_database(engine), probe_redis(redis_client)):
        assert probe.ok and probe.error is None and probe.error_type is None
        assert probe.latency_ms is not None and probe.latency_ms >= 0


def test_dead_dependencies_say_why(dead_engine: Engine, dead_redis_url: str) -> None:
    client = redis_lib.Redis.from_url(dead_redis_url, socket_connect_timeout=1)
    try:
        database, cache = probe_database(dead_engine), probe_redis(client)
    finally:
        client.close()
    assert database.as_dict()["ok"] is False and database.latency_ms is None
    assert database.error_type == "OperationalError"
    assert database.error is not None and database.error.startswith("OperationalError: ")
    assert cache.error_type == "ConnectionError"
    assert "\n" not in (cache.error or "") and len(cache.error or "") <= 230
