"""The dramatiq broker (Redis, from BROKER_URL) and its middleware list, set up once per process."""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from worker._logging import LoggingContextMiddleware
from worker._metrics import MetricsMiddleware
from worker._resources import ResourcesMiddleware


def create_broker(url: str) -> RedisBroker:
    # A short connect timeout so that a dead broker fails an enqueue fast (callers then fall
    # back to the outbox or run inline) instead of hanging a request.
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=10.0)
    # `after_*` hooks run in reverse order: metrics and logging sit before Retries so they
    # see whether Retries gave up (`message.failed`), and resources sit last so the session
    # is closed before anything else reports.
    middleware = [
        AgeLimit(),
        TimeLimit(time_limit=30 * 60 * 1000),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        MetricsMiddleware(),
        LoggingContextMiddleware(),
        Retries(max_retries=10, min_backoff=1_000, max_backoff=5 * 60 * 1000),
        CurrentMessage(),
        ResourcesMiddleware(),
    ]
    return RedisBroker(client=client, middleware=middleware)


def setup_broker(url: str) -> RedisBroker:
    broker = create_broker(url)
    dramatiq.set_broker(broker)
    return broker
