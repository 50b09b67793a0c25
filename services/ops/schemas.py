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
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from db.models import (
    G2APurchaseStatus,
    OrderStatus,
    SyncKind,
    SyncStatus,
    TransactionStatus,
    TransactionType,
)
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


# --- the console's views (Syncs and an order's timeline) ---------------------------------


class SyncRunView(View):
    """One `sync_runs` row with every count it records; `duration_s` so far while running."""

    id: uuid.UUID
    kind: SyncKind
    status: SyncStatus
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    duration_s: float | None = None
    added: int
    updated: int
    unchanged: int
    removed: int
    errors: int
    pages: int
    requests: int
    error_detail: str | None = None


class SyncRunList(View):
    items: list[SyncRunView]
    total: int


class SyncProgressView(View):
    """What the running sync last published in `g2a:sync:progress`."""

    pages_done: int
    pages_total: int
    added: int
    updated: int
    unchanged: int
    removed: int
    errors: int
    requests: int


class RunningSync(View):
    run_id: uuid.UUID
    kind: SyncKind
    started_at: dt.datetime
    running_s: float
    holder: str | None = None
    progress: SyncProgressView


class SyncsView(View):
    """`GET /admin/api/syncs`: a page of runs and the run in progress (`null` when none)."""

    items: list[SyncRunView]
    total: int
    running: RunningSync | None

    def dump(self) -> dict[str, Any]:
        return {"items": [item.dump() for item in self.items], "total": self.total,
                "running": None if self.running is None else self.running.dump()}


class SyncChartPoint(View):
    started_at: dt.datetime
    kind: SyncKind
    status: SyncStatus
    duration_s: float | None = None
    changed: int  # added + updated
    removed: int


class SyncChart(View):
    """Runs started in the last `days`, oldest first; at most `limit` of them (the newest)
    so a chart never carries more points than it can draw. `total` counts the window."""

    days: int
    points: list[SyncChartPoint]
    total: int


class TimelineOrder(View):
    id: uuid.UUID
    user_email: str
    status: OrderStatus
    total: Money
    refunded: Money
    created_at: dt.datetime
    updated_at: dt.datetime


class TimelineItem(View):
    id: int
    game_id: uuid.UUID
    game_name: str
    quantity: int
    unit_price: Money
    keys_stored: int  # units whose key is stored (never the key itself)


class TransactionEntry(View):
    kind: Literal["transaction"] = "transaction"
    at: dt.datetime
    type: TransactionType
    amount: Money
    status: TransactionStatus


class G2APurchaseEntry(View):
    kind: Literal["g2a_purchase"] = "g2a_purchase"
    at: dt.datetime
    updated_at: dt.datetime
    order_item_id: int
    unit_index: int
    g2a_order_id: str | None = None
    status: G2APurchaseStatus
    price: Money | None = None
    last_error: str | None = None


class WebhookEntry(View):
    kind: Literal["webhook_event"] = "webhook_event"
    at: dt.datetime
    event_id: str
    type: str
    status: str
    outcome: InboxOutcome
    processed_at: dt.datetime | None = None
    attempts: int
    last_error: str | None = None


TimelineEntry = Annotated[TransactionEntry | G2APurchaseEntry | WebhookEntry,
                          Field(discriminator="kind")]


class OrderTimeline(View):
    """An order as support sees it: what happened to it, in time order. Holds no game key,
    not even masked: the view has no field a key could land in."""

    order: TimelineOrder
    items: list[TimelineItem]
    entries: list[TimelineEntry]
    reason: str | None = None  # an open order: what keeps it from finishing


class StatusReport(View):
    """`keysync status --json` and `GET /admin/api/overview`, section by section (the
    sections' own shapes are `services.ops.status.report`'s); a section that could not be
    read is null."""

    model_config = ConfigDict(frozen=True, extra="allow")

    checked_at: dt.datetime
    overall: str
    ok: bool
    checks: list[dict[str, Any]]
    database: dict[str, Any]
    redis: dict[str, Any]
    broker: dict[str, Any]
    cache: dict[str, Any]
    job_outbox: dict[str, Any]
    queues: dict[str, Any] | None
    dead_letters: dict[str, int] | None
    workers: list[dict[str, Any]] | None
    sync_lock: dict[str, Any] | None
    last_runs: dict[str, Any] | None
    removal_guard: dict[str, Any] | None
    webhook_events: dict[str, Any] | None
    stuck_orders: dict[str, Any] | None
    g2a_funds: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    errors: list[str]
