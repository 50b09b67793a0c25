"""Read-only views of the broker's queues, from dramatiq's Redis key layout.

The one place that knows that layout (`dramatiq/brokers/redis/dispatch.lua`), under the
broker's namespace:
  `{queue}`        list of ready message ids, oldest first
  `{queue}.msgs`   hash id -> message, from enqueue until ack (so ready + in progress)
  `{queue}.DQ.msgs` the same for delayed messages (retries, ETAs); a worker may already
                   hold them in memory until their ETA, so the hash, not the list, counts
  `{queue}.XQ`     sorted set of dead-lettered ids by the time they died; `.XQ.msgs` holds them
Ids are dramatiq's per-enqueue `redis_message_id`, not the message id. Every call is a
bounded number of round trips; paging is by offset, newest first.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

import redis

NAMESPACE = "dramatiq"
# Dead letters are decoded to count them per actor; past this many we report a lower bound.
MAX_DEAD_SCANNED = 10_000


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


@dataclass(frozen=True)
class Page:
    items: list[BrokerMessage]
    total: int
    offset: int

    @property
    def next_offset(self) -> int | None:
        end = self.offset + len(self.items)
        return end if end < self.total else None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _from_ms(value: object) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(_text(value)) / 1000, UTC)
    except (TypeError, ValueError):
        return None


class BrokerInspector:
    """Queue depths, messages and dead letters of one Redis broker (never modifies it)."""

    def __init__(self, client: redis.Redis, namespace: str = NAMESPACE) -> None:
        self._redis = client
        self._ns = namespace

    def _key(self, queue: str, suffix: str = "") -> str:
        return f"{self._ns}:{queue}{suffix}"

    def queues(self) -> list[str]:
        """Every queue that holds or held messages (`default` always)."""
        # dramatiq keeps no registry of queues in Redis; every queue that ever held a
        # message has a `.msgs` hash. SCAN (never KEYS) keeps Redis responsive.
        names = {"default"}
        for key in self._redis.scan_iter(match=f"{self._ns}:*.msgs", count=1000):
            name = _text(key).removeprefix(f"{self._ns}:").removesuffix(".msgs")
            names.add(name.removesuffix(".XQ").removesuffix(".DQ"))
        return sorted(names)

    def depth(self, queue: str) -> QueueDepth:
        pipe = self._redis.pipeline(transaction=False)
        pipe.llen(self._key(queue))
        pipe.hlen(self._key(queue, ".msgs"))
        pipe.hlen(self._key(queue, ".DQ.msgs"))
        pipe.zcard(self._key(queue, ".XQ"))
        ready, stored, delayed, dead = (int(v) for v in pipe.execute())
        # `.msgs` holds a message from enqueue until ack: ready ones are also listed.
        return QueueDepth(ready, delayed, max(stored - ready, 0), dead)

    def depths(self) -> dict[str, QueueDepth]:
        return {queue: self.depth(queue) for queue in self.queues()}

    def oldest_ready_age_s(self, queue: str = "default", *, now: float | None = None) -> float:
        """How long the next message to be fetched has waited (0 when the queue is empty)."""
        head = self._redis.lindex(self._key(queue), 0)
        raw = None if head is None else self._redis.hget(self._key(queue, ".msgs"), head)
        enqueued = None if raw is None else _decode(raw).get("message_timestamp")
        if enqueued is None:
            return 0.0
        return max((now if now is not None else time.time()) - float(enqueued) / 1000, 0.0)

    def dead_by_actor(self, *, limit: int = MAX_DEAD_SCANNED) -> dict[str, int]:
        """Dead-lettered messages per actor over every queue (a lower bound past `limit`)."""
        per_actor: dict[str, int] = {}
        scanned = 0
        for queue in self.queues():
            for _, raw in self._redis.hscan_iter(self._key(queue, ".XQ.msgs"), count=500):
                scanned += 1
                if scanned > limit:
                    return per_actor
                actor = str(_decode(raw).get("actor_name", "<undecodable>"))
                per_actor[actor] = per_actor.get(actor, 0) + 1
        return per_actor

    def messages(self, state: State, queue: str = "default", *, offset: int = 0,
                 limit: int = 50) -> Page:
        """One page of a queue's messages in `state`, newest first."""
        if offset < 0 or limit < 1:
            raise ValueError("offset must be >= 0 and limit >= 1")
        if state is State.QUEUED:
            total = int(self._redis.llen(self._key(queue)))
            # The list is oldest first: page from its tail.
            ids = list(reversed(self._redis.lrange(self._key(queue), -(offset + limit),
                                                   -(offset + 1))))
            raws = self._redis.hmget(self._key(queue, ".msgs"), ids) if ids else []
            return Page([_message(r, queue, state) for r in raws if r is not None], total, offset)
        if state is State.DEAD:
            key = self._key(queue, ".XQ")
            total = int(self._redis.zcard(key))
            scored = cast(list[tuple[bytes, float]], self._redis.zrevrange(
                key, offset, offset + limit - 1, withscores=True))
            raws = (self._redis.hmget(self._key(queue, ".XQ.msgs"), [i for i, _ in scored])
                    if scored else [])
            return Page([_message(raw, queue, state, failed_ms=score)
                         for raw, (_, score) in zip(raws, scored, strict=True)
                         if raw is not None], total, offset)
        # Delayed messages have no order in Redis but their ETA; they are few (retries
        # and deferred runs), so they are read whole and sorted.
        delayed = [_message(raw, queue, state)
                   for raw in self._redis.hvals(self._key(queue, ".DQ.msgs"))]
        delayed.sort(key=lambda m: m.enqueued_at or datetime.min.replace(tzinfo=UTC),
                     reverse=True)
        return Page(delayed[offset:offset + limit], len(delayed), offset)


def _decode(raw: object) -> dict[str, Any]:
    try:
        data = json.loads(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _message(raw: object, queue: str, state: State, *,
             failed_ms: float | None = None) -> BrokerMessage:
    data = _decode(raw)
    options = data.get("options") or {}
    return BrokerMessage(
        message_id=str(data.get("message_id", "")),
        queue=queue,
        actor=str(data.get("actor_name", "<undecodable>")),
        args=list(data.get("args") or []),
        kwargs=dict(data.get("kwargs") or {}),
        state=state,
        enqueued_at=_from_ms(data.get("message_timestamp")),
        retries=int(options.get("retries", 0)),
        failed_at=_from_ms(failed_ms) if failed_ms is not None else None,
    )
