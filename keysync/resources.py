"""Per-process resources built from settings: engine, sessions, Redis clients, cache, broker.

Built once by whoever owns the process (the worker middleware at boot, the web app's
lifespan, a CLI command) and handed to services as explicit arguments.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import httpx
import redis
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.session import make_engine, make_session_factory
from keysync.settings import Settings
from services.cache import Cache, CacheOutbox, make_cache_redis
from services.g2a import G2AClient, make_client, make_http
from services.webhooks.batch import EventBatcher


def make_redis(url: str) -> redis.Redis:
    """Redis for locks, progress and rate limiting: short connect timeout, no silent retries."""
    return redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0)


@dataclass
class Resources:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    redis: redis.Redis
    cache: Cache
    broker: RedisBroker
    _g2a_http: httpx.Client | None = field(default=None, repr=False)
    # Guards the lazily built `_g2a_http` and `_webhook_batcher` (worker threads share them).
    _lazy_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _webhook_batcher: EventBatcher | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        settings: Settings,
        broker: RedisBroker,
        *,
        pool_size: int = 5,
        name: str = "keysync",
    ) -> Resources:
        settings.require("database_url", "redis_url")
        engine = make_engine(settings.database_url, pool_size=pool_size, application_name=name)
        sessions = make_session_factory(engine)
        cache = Cache(make_cache_redis(settings.redis_url), CacheOutbox(sessions))
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            redis=make_redis(settings.redis_url),
            cache=cache,
            broker=broker,
        )

    def g2a_http(self) -> httpx.Client:
        """One pooled HTTP client to the G2A API per process (worker threads share it)."""
        with self._lazy_lock:
            if self._g2a_http is None:
                self._g2a_http = make_http(self.settings)
            return self._g2a_http

    def g2a_client(self) -> G2AClient:
        """A G2A client for one job: shared connections and rate limit, its own counters."""
        return make_client(self.settings, self.g2a_http(), self.redis)

    def webhook_batcher(self) -> EventBatcher:
        """The process's group commit for webhook events (worker threads share it)."""
        with self._lazy_lock:
            if self._webhook_batcher is None:
                self._webhook_batcher = EventBatcher(self.sessions, self.broker, self.cache)
            return self._webhook_batcher

    def close(self) -> None:
        if self._g2a_http is not None:
            self._g2a_http.close()
        self.engine.dispose()
        self.redis.close()
