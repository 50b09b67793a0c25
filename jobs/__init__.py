"""The dramatiq entry module: `keysync worker` runs `dramatiq jobs`.

Importing it binds the process's global broker (`jobs._broker`, from BROKER_URL) and
declares every actor, one thin module per domain: decode arguments, take the job's
session/resources (`worker.context.current_job()`), call one service. Each module also
declares the periodic runs of its actors (`SCHEDULE`), collected here for the scheduler.
"""

from __future__ import annotations

from jobs import accounts, catalog, maintenance, orders, webhooks
from jobs._broker import broker
from keysync.settings import Settings
from worker.schedule import Every, ScheduledJob, collect

__all__ = ["SCHEDULE", "accounts", "broker", "catalog", "maintenance", "orders", "schedule",
           "webhooks"]

SCHEDULE: tuple[Every, ...] = (
    *catalog.SCHEDULE,
    *orders.SCHEDULE,
    *webhooks.SCHEDULE,
    *maintenance.SCHEDULE,
)


def schedule(settings: Settings) -> list[ScheduledJob]:
    """What `keysync scheduler` fires: every declared `SCHEDULE`, crons from `settings`."""
    return collect(settings, SCHEDULE)
