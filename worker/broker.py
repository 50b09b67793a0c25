"""The dramatiq broker (Redis) and its middleware list.

`make_broker(settings)` builds one for whoever needs to send jobs (the web app, a CLI
command, the scheduler); it binds nothing global. Only the dramatiq entry module, `jobs`
(what `keysync worker` hands to dramatiq), makes one the process's global broker and
declares the actors against it.
"""

from __future__ import annotations

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

from keysync.settings import Settings
from worker._logging import LoggingContextMiddleware
from worker._metrics import MetricsMiddleware
from worker._resources import ResourcesMiddleware
from worker.heartbeat import HeartbeatMiddleware


def create_broker(url: str) -> RedisBroker:
    """A broker on the Redis at `url` (tests hand write paths a dead one this way)."""
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
        HeartbeatMiddleware(),
    ]
    return RedisBroker(client=client, middleware=middleware)  # type: ignore[no-untyped-call]


def make_broker(settings: Settings) -> RedisBroker:
    """The broker of BROKER_URL (exit 2 naming the variable when it is unset)."""
    settings.require("broker_url")
    return create_broker(settings.broker_url)
