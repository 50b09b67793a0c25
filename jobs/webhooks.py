"""Actors: webhooks (inbox processing and its sweeper)."""

from __future__ import annotations

import dramatiq

from services.webhooks import service as webhooks
from worker import current_job


@dramatiq.actor(max_retries=10, time_limit=5 * 60_000)
def process_webhook_event(event_id: str) -> None:
    resources = current_job().resources
    webhooks.process_event(resources.sessions, resources.broker, resources.cache, event_id)


@dramatiq.actor(max_retries=0, time_limit=5 * 60_000)
def sweep_webhook_events() -> None:
    resources = current_job().resources
    webhooks.sweep(resources.sessions, resources.broker)
