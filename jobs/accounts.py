"""Actors: accounts (welcome email, guest cart/wishlist migration)."""

from __future__ import annotations

import uuid

import dramatiq

from jobs._broker import broker
from services.accounts import email, migration
from worker.context import current_job


@dramatiq.actor(broker=broker, max_retries=8, time_limit=60_000)
def send_email(to: str, subject: str, body: str) -> None:
    """At-least-once: a redelivered message may send a duplicate, never lose the email."""
    email.send_email(current_job().resources.settings, to, subject, body)


@dramatiq.actor(broker=broker, max_retries=10, time_limit=60_000)
def migrate_guest_data(session_id: str, user_id: str) -> None:
    """Idempotent: a second delivery finds no guest rows and changes nothing."""
    job = current_job()
    migration.migrate_guest_data(job.session, job.resources.cache, session_id, uuid.UUID(user_id))
