"""Actors: orders (fulfilment and the G2A status poller)."""

from __future__ import annotations

import uuid

import dramatiq
import structlog

from keysync.resources import Resources
from services.fulfilment import Fulfiller, Outcome
from services.g2a import G2AClient, RateLimiter
from services.order_polling import poll_order_status as poll_service
from worker import current_job

log = structlog.get_logger(__name__)

# A pending fulfilment (key not ready, G2A briefly unavailable) re-queues itself with
# growing delays; after that the scheduled poller is the backstop.
MAX_RESUMES = 10
MAX_RESUME_DELAY_MS = 60_000


def g2a_client(resources: Resources) -> G2AClient:
    """A G2A client over the process's pooled HTTP client and the shared rate limit."""
    settings = resources.settings
    return G2AClient(
        resources.g2a_http(),
        email=settings.g2a_email,
        api_hash=settings.g2a_api_hash.get_secret_value(),
        api_secret=settings.g2a_api_secret.get_secret_value(),
        rate_limiter=RateLimiter(resources.redis, settings.g2a_rate_limit_per_min),
    )


@dramatiq.actor(max_retries=10, time_limit=30 * 60_000)
def fulfil_order(order_id: str) -> None:
    job = current_job()
    resources = job.resources
    result = Fulfiller(
        sessions=resources.sessions,
        g2a=g2a_client(resources),
        cache=resources.cache,
        broker=resources.broker,
        key_encryption_key=resources.settings.key_encryption_key.get_secret_value(),
    ).run(uuid.UUID(order_id))
    if result.outcome is Outcome.PENDING:
        resumes = int(job.message.options.get("keysync_resumes", 0))
        if resumes >= MAX_RESUMES:
            log.warning("fulfilment still pending; left to the poller", order_id=order_id)
            return
        delay = min(1000 * 2**resumes, MAX_RESUME_DELAY_MS)
        fulfil_order.send_with_options(
            args=(order_id,), delay=delay, keysync_resumes=resumes + 1
        )


@dramatiq.actor(max_retries=0, time_limit=10 * 60_000)
def poll_order_status() -> None:
    resources = current_job().resources
    poll_service(resources.sessions, g2a_client(resources), resources.broker)
