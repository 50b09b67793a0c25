"""Actors: orders (fulfilment and the G2A status poller, every minute)."""

from __future__ import annotations

import uuid

import dramatiq

from jobs._broker import broker
from services.orders.chains import FulfilmentChains, message_token
from services.orders.fulfilment import Fulfiller
from services.orders.give_up import GiveUp
from services.orders.polling import poll_order_status as poll_service
from services.webhooks.service import enqueue_orphans
from worker.context import current_job
from worker.enqueue import Actor
from worker.schedule import Every

SCHEDULE = (Every(Actor.POLL_ORDER_STATUS, "* * * * *", grace_s=60),)

# A message option, not an argument: how many delayed resumes this chain has sent (the
# backoff step, see `services.orders.chains.resume_delay_ms`).
RESUMES_OPTION = "keysync_resumes"


@dramatiq.actor(broker=broker, max_retries=10, time_limit=30 * 60_000)
def fulfil_order(order_id: str, chain: str | None = None) -> None:
    """One step of the order's fulfilment chain (`chain`: its token; None starts one named
    after this message, so a redelivery or retry of it continues the same chain).

    A run left waiting on G2A re-sends itself with a growing delay (1 s … 60 s) for as
    long as it stays pending; the poller gives the order up after FULFILMENT_GIVE_UP_S.
    """
    job = current_job()
    resources = job.resources
    fulfiller = Fulfiller(
        sessions=resources.sessions,
        g2a=resources.g2a_client(),
        cache=resources.cache,
        broker=resources.broker,
        key_encryption_key=resources.settings.key_encryption_key.get_secret_value(),
        g2a_order_stored=enqueue_orphans,
    )
    resume = FulfilmentChains(resources.redis).run(
        uuid.UUID(order_id), chain or message_token(job.message.message_id),
        int(job.message.options.get(RESUMES_OPTION, 0)), fulfiller.run,
    )
    if resume is not None:
        fulfil_order.send_with_options(
            args=(order_id, resume.token), delay=resume.delay_ms,
            keysync_resumes=resume.resumes,  # RESUMES_OPTION
        )


@dramatiq.actor(broker=broker, max_retries=0, time_limit=10 * 60_000)
def poll_order_status() -> None:
    resources = current_job().resources
    poll_service(
        resources.sessions, resources.g2a_client(), resources.broker,
        chains=FulfilmentChains(resources.redis),
        give_up=GiveUp(resources.settings.fulfilment_give_up_s, resources.cache),
    )
