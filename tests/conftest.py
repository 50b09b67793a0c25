"""Test infrastructure: real PostgreSQL and Redis, isolated per test run and per test.

Servers: TEST_DATABASE_URL / TEST_REDIS_URL when set (any reachable server), otherwise
throwaway servers started from the system binaries for this pytest process and removed
afterwards. Each run (each xdist worker) gets its own freshly migrated database and its
own Redis db number; every test starts from empty tables and an empty Redis db.

The servers are started in `pytest_configure`, before test modules are imported, because
importing `worker`/`jobs` binds the dramatiq broker to BROKER_URL.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis as redis_lib
from sqlalchemy.engine import make_url

from tests.helpers import stop_worker

# Figures of the fault, fuzz and security scenarios, summarised at the end of the run.
pytest_plugins = ["tests.figures"]

_state: dict[str, Any] = {}

TABLES = ("users", "games", "cart_items", "wishlist_items", "orders", "order_items",
          "transactions", "g2a_purchases", "webhook_events", "sync_runs", "cache_invalidations",
          "lock_fences", "job_outbox", "admin_actions")


def _worker_index(config: pytest.Config) -> int:
    worker_input = getattr(config, "workerinput", None)
    return int(worker_input["workerid"].removeprefix("gw")) if worker_input else 0


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("numprocesses", default=None) and not hasattr(config, "workerinput"):
        return  # the xdist controller runs no tests
    from keysync.embedded import EmbeddedPostgres, EmbeddedRedis, scratch_dir
    from keysync.settings import generate_secret

    index = _worker_index(config)
    # As root the postgres user must enter it, even when TMPDIR is inside a private home.
    tmp = scratch_dir("keysync-test-")
    _state["tmp"] = tmp

    admin_url = os.environ.get("TEST_DATABASE_URL")
    if not admin_url:
        _state["pg"] = EmbeddedPostgres(tmp / "pg").start()
        admin_url = _state["pg"].url
    redis_url = os.environ.get("TEST_REDIS_URL")
    if not redis_url:
        _state["redis"] = EmbeddedRedis(tmp / "redis").start()
        redis_url = _state["redis"].url

    url = make_url(admin_url).set(drivername="postgresql+psycopg")
    db_name = f"keysync_test_{index}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False),
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    _state["admin_url"] = url
    _state["db_name"] = db_name
    database_url = url.set(database=db_name).render_as_string(hide_password=False)

    parts = urlsplit(redis_url)
    redis_db = int(parts.path.strip("/") or 0) + index
    test_redis_url = urlunsplit(parts._replace(path=f"/{redis_db}"))

    os.environ.update({
        "DATABASE_URL": database_url,
        "REDIS_URL": test_redis_url,
        "BROKER_URL": test_redis_url,
        "LOG_FORMAT": "console",
        "LOG_LEVEL": os.environ.get("TEST_LOG_LEVEL", "WARNING"),
        "WEBHOOK_SECRETS": os.environ.get("WEBHOOK_SECRETS", "")
        or "whsec_dGVzdC1zZWNyZXQtb25lLXRlc3Qtc2VjcmV0LW9uZQ== "
           "whsec_dGVzdC1zZWNyZXQtdHdvLXRlc3Qtc2VjcmV0LXR3bw==",
        # No public defaults exist (CONTRACT §3): the run makes its own, and every
        # subprocess a test spawns inherits them from here.
        "JWT_SECRET": os.environ.get("JWT_SECRET", "") or generate_secret("jwt_secret"),
        "KEY_ENCRYPTION_KEY": os.environ.get("KEY_ENCRYPTION_KEY", "")
        or generate_secret("key_encryption_key"),
        "PROMETHEUS_DISABLE_CREATED_SERIES": "True",
    })
    for name in ("G2A_API_URL", "G2A_EMAIL", "G2A_API_HASH", "G2A_API_SECRET"):
        os.environ.pop(name, None)
    _state["database_url"] = database_url
    _state["redis_url"] = test_redis_url

    from db.migrate import upgrade
    from keysync.logging import configure_logging

    configure_logging("console", os.environ["LOG_LEVEL"])
    upgrade(database_url)


def pytest_unconfigure(config: pytest.Config) -> None:
    if "db_name" in _state:
        from sqlalchemy import create_engine, text

        engine = create_engine(_state["admin_url"], isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{_state["db_name"]}" WITH (FORCE)'))
        finally:
            engine.dispose()
    for name in ("redis", "pg"):
        if name in _state:
            _state[name].stop()
    if "tmp" in _state:
        shutil.rmtree(_state["tmp"], ignore_errors=True)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def database_url() -> str:
    return str(_state["database_url"])


@pytest.fixture(scope="session")
def redis_url() -> str:
    return str(_state["redis_url"])


@pytest.fixture(scope="session")
def settings() -> Any:
    from keysync.settings import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Any]:
    from db.session import make_engine

    eng = make_engine(database_url, pool_size=10)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def sessions(engine: Any) -> Any:
    from db.session import make_session_factory

    return make_session_factory(engine)


@pytest.fixture(autouse=True)
def _clean_state(request: pytest.FixtureRequest) -> None:
    """Every test starts from empty tables and an empty Redis db."""
    if "_state" not in globals() or "database_url" not in _state:
        return
    engine = request.getfixturevalue("engine")
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    client = redis_lib.Redis.from_url(_state["redis_url"])
    client.flushdb()
    client.close()


@pytest.fixture
def session(sessions: Any) -> Iterator[Any]:
    s = sessions()
    yield s
    s.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def cache(redis_url: str, sessions: Any) -> Any:
    from services.cache import Cache, CacheOutbox, make_cache_redis

    return Cache(make_cache_redis(redis_url), CacheOutbox(sessions))


@pytest.fixture(scope="session")
def broker() -> Any:
    from jobs import broker as the_broker  # the broker every actor is declared on

    return the_broker


@pytest.fixture
def resources(settings: Any, broker: Any) -> Iterator[Any]:
    from keysync.resources import Resources

    res = Resources.build(settings, broker)
    yield res
    res.close()


@pytest.fixture
def dead_redis_url() -> str:
    """A Redis URL where nothing listens (a really stopped server, from the client's view)."""
    from keysync.embedded import free_port

    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture
def worker_thread(broker: Any) -> Iterator[Any]:
    """A real dramatiq Worker on the real Redis broker, in this process; stopped afterwards."""
    import dramatiq

    import jobs  # noqa: F401  (declare every actor)

    w = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    w.start()
    yield w
    # Detached from the broker too: a stopped worker's consumers would otherwise take the
    # next test's messages and run them on resources that are already closed.
    stop_worker(broker, w)


@pytest.fixture
def g2a_worker(broker: Any, settings: Any, sim: Any) -> Iterator[Any]:
    """A real in-process worker whose resources carry the G2A settings of the requesting
    module's `sim` fixture (the suite's environment has none, on purpose)."""
    import dramatiq

    import jobs  # noqa: F401  (declare every actor)
    from keysync.resources import Resources
    from worker._resources import ResourcesMiddleware

    configured = settings.model_copy(update={
        "g2a_api_url": sim.url,
        "g2a_email": sim.config.email,
        "g2a_api_hash": type(settings.g2a_api_hash)(sim.config.api_hash),
        "g2a_api_secret": type(settings.g2a_api_secret)(sim.config.api_secret),
        "g2a_rate_limit_per_min": 600_000,
    })
    middleware = next(m for m in broker.middleware if isinstance(m, ResourcesMiddleware))
    previous = middleware.resources
    middleware.resources = Resources.build(configured, broker, name="test-g2a-worker")
    w = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    w.start()
    try:
        yield w
    finally:
        stop_worker(broker, w)
        if middleware.resources is not None:
            middleware.resources.close()
        middleware.resources = previous
