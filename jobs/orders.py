"""Actors: orders (fulfilment and the G2A status poller, every minute)."""

from __future__ import annotations

import uuid

import dramatiq
import structlog

from jobs._broker import broker
from services.orders.fulfilment import Fulfiller, FulfilmentOutcome
from services.orders.polling import poll_order_status as poll_service
from worker.context import current_job
from worker.enqueue import Actor
from worker.schedule import Every

log = structlog.get_logger(__name__)

SCHEDULE = (Every(Actor.POLL_ORDER_STATUS, "* * * * *", grace_s=60),)

# A pending fulfilment (key not ready, G2A briefly unavailable) re-queues itself with
# growing delays; after that the scheduled poller is the backstop.
MAX_RESUMES = 10
MAX_RESUME_DELAY_MS = 60_000


@dramatiq.actor(broker=broker, max_retries=10, time_limit=30 * 60_000)
def fulfil_order(order_id: str) -> None:
    job = current_job()
    resources = job.resources
    result = Fulfiller(
        sessions=resources.sessions,
        g2a=resources.g2a_client(),
        cache=resources.cache,
        broker=resources.broker,
        key_encryption_key=resources.settings.key_encryption_key.get_secret_value(),
    ).run(uuid.UUID(order_id))
    if result.outcome is FulfilmentOutcome.PENDING:
        resumes = int(job.message.options.get("keysync_resumes", 0))
        if resumes >= MAX_RESUMES:
            log.warning("fulfilment still pending; left to the poller", order_id=order_id)
            return
        delay = min(1000 * 2**resumes, MAX_RESUME_DELAY_MS)
        fulfil_order.send_with_options(
            args=(order_id,), delay=delay, keysync_resumes=resumes + 1
        )


@dramatiq.actor(broker=broker, max_retries=0, time_limit=10 * 60_000)
def poll_order_status() -> None:
    resources = current_job().resources
    poll_service(resources.sessions, resources.g2a_client(), resources.broker)
