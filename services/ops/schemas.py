"""The operations views: each is exactly a CONTRACT §8 JSON shape (`--json` of the CLI and
the console's `/admin/api/*` answers alike).

Optional fields (`failed_at?`, `reason?`, …) are None when absent and dropped on output
(`dump`), as the contract's `?` says; money is a string (`"10.00"`), times ISO-8601.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainSerializer

from db.models import OrderStatus
from services.webhooks.schemas import WebhookOutcome

Money = Annotated[Decimal, PlainSerializer(str, return_type=str)]


class View(BaseModel):
    model_config = ConfigDict(frozen=True)

    def dump(self) -> dict[str, Any]:
        """The JSON object, absent optional fields omitted."""
        return self.model_dump(mode="json", exclude_none=True)


class JobState(StrEnum):
    QUEUED = "queued"
    DELAYED = "delayed"
    DEAD = "dead"


class JobView(View):
    message_id: str
    queue: str
    actor: str
    args: list[Any]
    kwargs: dict[str, Any]
    state: JobState
    enqueued_at: dt.datetime | None
    retries: int
    failed_at: dt.datetime | None = None
    last_error: str | None = None

    def dump(self) -> dict[str, Any]:
        # `enqueued_at` is always present (null only for an undecodable message).
        data = super().dump()
        data.setdefault("enqueued_at", None)
        return data


class JobList(View):
    items: list[JobView]
    total: int

    def dump(self) -> dict[str, Any]:
        return {"items": [item.dump() for item in self.items], "total": self.total}


class RetryResult(View):
    retried: int


class DiscardResult(View):
    discarded: int


class InboxOutcome(StrEnum):
    """An inbox event's outcome as operators filter it: `pending` (not handled yet, or its
    last attempt failed) or one of the stored `WebhookOutcome`s."""

    PENDING = "pending"
    PROCESSED = WebhookOutcome.PROCESSED.value
    IGNORED = WebhookOutcome.IGNORED.value
    ORPHAN = WebhookOutcome.ORPHAN.value
    DEAD = WebhookOutcome.DEAD.value


class WebhookEventView(View):
    event_id: str
    type: str
    order_id: str | None = None
    external_order_id: str | None = None
    status: str
    received_at: dt.datetime
    processed_at: dt.datetime | None = None
    outcome: InboxOutcome
    attempts: int
    last_error: str | None = None


class WebhookList(View):
    items: list[WebhookEventView]
    total: int


class ReplayResult(View):
    replayed: int


class OrderOpsView(View):
    id: uuid.UUID
    user_email: str
    status: OrderStatus
    total: Money
    created_at: dt.datetime
    updated_at: dt.datetime
    stuck_for_s: int | None = None
    reason: str | None = None


class OrderOpsList(View):
    items: list[OrderOpsView]
    total: int


class RelayResult(View):
    jobs_sent: int
    invalidations_applied: int


class AdminActionView(View):
    id: int
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    created_at: dt.datetime


class AdminActionList(View):
    items: list[AdminActionView]
    total: int


class AdminView(View):
    """A user as `keysync user admin` shows them."""

    id: uuid.UUID
    email: str
    is_admin: bool
