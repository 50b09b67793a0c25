"""Webhook values: the outcome of a stored event and the answer to a delivery."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel


class WebhookOutcome(StrEnum):
    """`webhook_events.outcome` (the first four), and what `process_event` reports."""

    PROCESSED = "processed"  # applied: the order moved, or fulfilment was resumed
    IGNORED = "ignored"  # valid and stored, but not a forward move (late / out of order)
    ORPHAN = "orphan"  # the order is not known yet; re-tried when it appears
    DEAD = "dead"  # unprocessed past the sweeper's bound; kept for operators
    # reported only, never stored:
    ALREADY = "already"  # processed (or dead) before: nothing done
    MISSING = "missing"  # no stored event with this id


class WebhookReceipt(BaseModel):
    """`POST /webhooks/g2a` answer: 202 `accepted` (stored, queued), 200 `duplicate`."""

    status: Literal["accepted", "duplicate"]
    webhook_id: str
