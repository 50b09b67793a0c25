"""Actors: webhooks (inbox processing and its sweeper, every minute)."""

from __future__ import annotations

import dramatiq

from jobs._broker import broker
from services.webhooks import service as webhooks
from worker.context import current_job
from worker.enqueue import Actor
from worker.schedule import Every

SCHEDULE = (Every(Actor.SWEEP_WEBHOOK_EVENTS, "* * * * *", grace_s=60),)


@dramatiq.actor(broker=broker, max_retries=10, time_limit=5 * 60_000)
def process_webhook_event(event_id: str) -> None:
    # Grouped with the events other threads of this process are handling: one transaction
    # for all of them (services.webhooks.batch).
    current_job().resources.webhook_batcher().process(event_id)


@dramatiq.actor(broker=broker, max_retries=0, time_limit=5 * 60_000)
def sweep_webhook_events() -> None:
    resources = current_job().resources
    webhooks.sweep(resources.sessions, resources.broker)
