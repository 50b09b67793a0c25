"""Dramatiq's Redis key layout and the messages stored in it, decoded for display.

The one place that knows that layout (`dramatiq/brokers/redis/dispatch.lua`), under the
broker's namespace:
  `{queue}`        list of ready message ids, oldest first
  `{queue}.msgs`   hash id -> message, from enqueue until ack (so ready + in progress)
  `{queue}.DQ.msgs` the same for delayed messages (retries, ETAs); a worker may already
                   hold them in memory until their ETA, so the hash, not the list, counts
  `{queue}.XQ`     sorted set of dead-lettered ids by the time they died; `.XQ.msgs` holds them
Ids are dramatiq's per-enqueue `redis_message_id`, not the message id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

NAMESPACE = "dramatiq"
# Ids read per round trip when listing or repairing.
WINDOW = 500


def redis_key(namespace: str, queue: str, suffix: str = "") -> str:
    """`{namespace}:{queue}{suffix}`: suffix "", ".msgs", ".DQ.msgs", ".XQ" or ".XQ.msgs"."""
    return f"{namespace}:{queue}{suffix}"


class State(StrEnum):
    QUEUED = "queued"
    DELAYED = "delayed"
    DEAD = "dead"


@dataclass(frozen=True)
class QueueDepth:
    ready: int
    delayed: int
    in_progress: int
    dead: int

    def as_dict(self) -> dict[str, int]:
        return {"ready": self.ready, "delayed": self.delayed, "in_progress": self.in_progress,
                "dead": self.dead}


@dataclass(frozen=True)
class BrokerMessage:
    message_id: str
    queue: str
    actor: str
    args: list[Any]
    kwargs: dict[str, Any]
    state: State
    enqueued_at: datetime | None
    retries: int
    failed_at: datetime | None = None  # dead letters only
    # The last line of the traceback Retries recorded for the latest failed attempt it
    # re-enqueued (the final attempt's own error never reaches Redis).
    last_error: str | None = None
    redis_id: str = ""  # dramatiq's per-enqueue id: the member of the dead set, say

    @property
    def sort_time(self) -> datetime:
        """Newest first means: dead letters by when they died, the rest by enqueue time."""
        return self.failed_at or self.enqueued_at or datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Page:
    items: list[BrokerMessage]
    total: int
    offset: int

    @property
    def next_offset(self) -> int | None:
        end = self.offset + len(self.items)
        return end if end < self.total else None


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def from_ms(value: object) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(text(value)) / 1000, UTC)
    except (TypeError, ValueError):
        return None


def decode(raw: object) -> dict[str, Any]:
    try:
        data = json.loads(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _last_line(traceback: object) -> str | None:
    if not isinstance(traceback, str):
        return None
    last = traceback.rstrip().rsplit("\n", 1)[-1].strip()
    return last[:500] or None


def message_from(raw: object, queue: str, state: State, *, failed_ms: float | None = None,
             redis_id: object = "") -> BrokerMessage:
    data = decode(raw)
    options = data.get("options") or {}
    return BrokerMessage(
        message_id=str(data.get("message_id", "")),
        queue=queue,
        actor=str(data.get("actor_name", "<undecodable>")),
        args=list(data.get("args") or []),
        kwargs=dict(data.get("kwargs") or {}),
        state=state,
        enqueued_at=from_ms(data.get("message_timestamp")),
        retries=int(options.get("retries", 0)),
        failed_at=from_ms(failed_ms) if failed_ms is not None else None,
        last_error=_last_line(options.get("traceback")),
        redis_id=text(redis_id),
    )
