"""Views of the broker's queues, and the repair of its dead letters, from dramatiq's Redis
key layout.

The one place that knows that layout (`dramatiq/brokers/redis/dispatch.lua`), under the
broker's namespace:
  `{queue}`        list of ready message ids, oldest first
  `{queue}.msgs`   hash id -> message, from enqueue until ack (so ready + in progress)
  `{queue}.DQ.msgs` the same for delayed messages (retries, ETAs); a worker may already
                   hold them in memory until their ETA, so the hash, not the list, counts
  `{queue}.XQ`     sorted set of dead-lettered ids by the time they died; `.XQ.msgs` holds them
Ids are dramatiq's per-enqueue `redis_message_id`, not the message id. Every call is a
bounded number of round trips; paging is by offset, newest first.

Listing (`search`) reads windows of `WINDOW` ids (LRANGE from the tail, ZREVRANGE, HSCAN),
never a whole list, hash or sorted set. `retry_dead` and `discard_dead` move or delete dead
letters with one Lua script per window: a message leaves the dead set (ZREM answered 1)
and is pushed onto its queue in the same atomic step, so two operators retrying at once
re-enqueue it once, and a crash never loses or doubles it.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

import redis
from dramatiq import Message

NAMESPACE = "dramatiq"
# Dead letters are decoded to count them per actor; past this many we report a lower bound.
MAX_DEAD_SCANNED = 10_000
# Ids read per round trip when listing or repairing.
WINDOW = 500
# A filtered listing (by actor) decodes at most this many messages per queue and state to
# count its matches; past it the total is a lower bound.
MAX_FILTER_SCANNED = 100_000
# Options that belong to one enqueue (or one failure), dropped when a dead letter is retried.
# The traceback stays: it is the last error known until the next attempt fails.
_ENQUEUE_OPTIONS = ("redis_message_id", "eta", "requeue_timestamp")


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

    def depths(self, queues: Iterable[str] | None = None) -> dict[str, QueueDepth]:
        """Per queue of `queues` (default: every queue found by `queues()`, a SCAN over the
        whole Redis: pass the names when they are known, e.g. from worker heartbeats)."""
        names = sorted(set(queues)) if queues is not None else self.queues()
        return {queue: self.depth(queue) for queue in names}

    def oldest_ready_age_s(self, queue: str = "default", *, now: float | None = None) -> float:
        """How long the next message to be fetched has waited (0 when the queue is empty)."""
        head = self._redis.lindex(self._key(queue), 0)
        raw = None if head is None else self._redis.hget(self._key(queue, ".msgs"), head)
        enqueued = None if raw is None else _decode(raw).get("message_timestamp")
        if enqueued is None:
            return 0.0
        return max((now if now is not None else time.time()) - float(enqueued) / 1000, 0.0)

    def dead_by_actor(self, *, limit: int = MAX_DEAD_SCANNED,
                      queues: Iterable[str] | None = None) -> dict[str, int]:
        """Dead-lettered messages per actor over every queue, or over `queues` (a lower
        bound past `limit`)."""
        per_actor: dict[str, int] = {}
        scanned = 0
        for queue in (sorted(set(queues)) if queues is not None else self.queues()):
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
        # Delayed messages have no order in Redis but their ETA: the hash is streamed
        # (HSCAN) and only the newest offset + limit are kept.
        total = int(self._redis.hlen(self._key(queue, ".DQ.msgs")))
        newest = heapq.nlargest(offset + limit, (s.message() for s in self._delayed(queue)),
                                key=lambda m: m.sort_time)
        return Page(newest[offset:], total, offset)

    # --- windows over one queue and state, newest first where Redis keeps an order -----

    # With `actor`, a message whose bytes do not even contain the actor's name is skipped
    # undecoded: a filtered listing decodes the matches only.

    def _queued(self, queue: str, actor: str | None = None) -> Iterator[_Stored]:
        key = self._key(queue)
        for start in itertools.count(0, WINDOW):
            # The list is oldest first: walk it from its tail.
            ids = list(reversed(self._redis.lrange(key, -(start + WINDOW), -(start + 1))))
            if not ids:
                return
            raws = self._redis.hmget(self._key(queue, ".msgs"), ids)
            for redis_id, raw in zip(ids, raws, strict=True):
                if _may_be(raw, actor):
                    yield _Stored(raw, queue, State.QUEUED, redis_id)
            if len(ids) < WINDOW:
                return

    def _delayed(self, queue: str, actor: str | None = None) -> Iterator[_Stored]:
        for redis_id, raw in self._redis.hscan_iter(self._key(queue, ".DQ.msgs"), count=WINDOW):
            if _may_be(raw, actor):
                yield _Stored(raw, queue, State.DELAYED, redis_id)

    def _dead(self, queue: str, actor: str | None = None) -> Iterator[_Stored]:
        key = self._key(queue, ".XQ")
        for start in itertools.count(0, WINDOW):
            scored = cast(list[tuple[bytes, float]], self._redis.zrevrange(
                key, start, start + WINDOW - 1, withscores=True))
            if not scored:
                return
            raws = self._redis.hmget(self._key(queue, ".XQ.msgs"), [i for i, _ in scored])
            for raw, (redis_id, score) in zip(raws, scored, strict=True):
                if _may_be(raw, actor):
                    yield _Stored(raw, queue, State.DEAD, redis_id, score)
            if len(scored) < WINDOW:
                return

    def _count(self, queue: str, state: State) -> int:
        if state is State.QUEUED:
            return int(self._redis.llen(self._key(queue)))
        if state is State.DELAYED:
            return int(self._redis.hlen(self._key(queue, ".DQ.msgs")))
        return int(self._redis.zcard(self._key(queue, ".XQ")))

    def _source(self, queue: str, state: State, actor: str | None = None
                ) -> Iterator[_Stored]:
        return {State.QUEUED: self._queued, State.DELAYED: self._delayed,
                State.DEAD: self._dead}[state](queue, actor)

    def search(self, states: Collection[State] = tuple(State), *, actor: str | None = None,
               offset: int = 0, limit: int = 50) -> Page:
        """Messages of every queue in `states` (of `actor` only, if given), newest first.

        Unfiltered, each queue and state costs its length and one window. Filtered by actor,
        each is read window by window to count the matches (at most `MAX_FILTER_SCANNED`
        candidates, then the total is a lower bound); only offset + limit messages per
        source are ever held.
        """
        if offset < 0 or limit < 1:
            raise ValueError("offset must be >= 0 and limit >= 1")
        wanted = offset + limit
        total = 0
        candidates: list[BrokerMessage] = []
        for queue in self.queues():
            for state in states:
                source = self._source(queue, state, actor)
                if actor is None:
                    total += self._count(queue, state)
                    matches: Iterator[_Stored] = source
                else:
                    counted = _Counted(s for s in itertools.islice(source, MAX_FILTER_SCANNED)
                                       if s.actor() == actor)
                    matches = counted
                if state is State.DELAYED:  # no order in Redis: keep the newest
                    candidates += heapq.nlargest(wanted, (s.message() for s in matches),
                                                 key=lambda m: m.sort_time)
                else:
                    # Only the page's messages are built; the rest is at most counted.
                    candidates += (s.message() for s in itertools.islice(matches, wanted))
                    if actor is not None:
                        for _ in matches:
                            pass
                if actor is not None:
                    total += counted.count
        newest = heapq.nlargest(wanted, candidates, key=lambda m: m.sort_time)
        return Page(newest[offset:], total, offset)

    def find_dead(self, actor: str, first_args: Collection[str], *,
                  limit: int = MAX_DEAD_SCANNED) -> dict[str, BrokerMessage]:
        """The newest dead letter of `actor` for each of `first_args` (its first argument,
        e.g. an order id), reading at most `limit` dead letters newest first."""
        found: dict[str, BrokerMessage] = {}
        wanted = set(first_args)
        if not wanted:
            return found
        for queue in self.queues():
            for stored in itertools.islice(self._dead(queue, actor), limit):
                if len(found) == len(wanted):
                    return found
                if stored.actor() != actor:
                    continue
                args = _decode(stored.raw).get("args") or [None]
                key = str(args[0])
                if key in wanted and key not in found:
                    found[key] = stored.message()
        return found


@dataclass(frozen=True, slots=True)
class _Stored:
    """A message as Redis holds it; decoded into a BrokerMessage only when shown."""

    raw: object  # bytes from Redis
    queue: str
    state: State
    redis_id: object
    score: float | None = None  # when it died, for dead letters

    def actor(self) -> str | None:
        name = _decode(self.raw).get("actor_name")
        return None if name is None else str(name)

    def message(self) -> BrokerMessage:
        return _message(self.raw, self.queue, self.state, failed_ms=self.score,
                        redis_id=self.redis_id)


class _Counted(Iterator[_Stored]):
    """An iterator that counts what it has handed out."""

    def __init__(self, items: Iterable[_Stored]) -> None:
        self._items = iter(items)
        self.count = 0

    def __next__(self) -> _Stored:
        item = next(self._items)
        self.count += 1
        return item


def _decode(raw: object) -> dict[str, Any]:
    try:
        data = json.loads(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _may_be(raw: object, actor: str | None) -> bool:
    """Whether a stored message may be one of `actor`'s (always, without a filter)."""
    if raw is None:
        return False
    return actor is None or not isinstance(raw, bytes) or actor.encode() in raw


def _last_line(traceback: object) -> str | None:
    if not isinstance(traceback, str):
        return None
    last = traceback.rstrip().rsplit("\n", 1)[-1].strip()
    return last[:500] or None


def _message(raw: object, queue: str, state: State, *, failed_ms: float | None = None,
             redis_id: object = "") -> BrokerMessage:
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
        last_error=_last_line(options.get("traceback")),
        redis_id=_text(redis_id),
    )


# --- repairing dead letters -----------------------------------------------------------------

# KEYS: dead set, its hash, the queue's hash, the queue's list.
# ARGV: (dead id, new id, new message) triples. ZREM's answer decides: a member another
# call already took (or dramatiq's TTL maintenance expired) is skipped, never re-enqueued.
_RETRY = """
local moved = {}
for i = 1, #ARGV, 3 do
    if redis.call('zrem', KEYS[1], ARGV[i]) == 1 then
        redis.call('hdel', KEYS[2], ARGV[i])
        redis.call('hset', KEYS[3], ARGV[i + 1], ARGV[i + 2])
        redis.call('rpush', KEYS[4], ARGV[i + 1])
        moved[#moved + 1] = ARGV[i]
    end
end
return moved
"""

# KEYS: dead set, its hash. ARGV: dead ids.
_DISCARD = """
local removed = {}
for i = 1, #ARGV do
    if redis.call('zrem', KEYS[1], ARGV[i]) == 1 then
        redis.call('hdel', KEYS[2], ARGV[i])
        removed[#removed + 1] = ARGV[i]
    end
end
return removed
"""


@dataclass(frozen=True)
class Repair:
    """What a retry or discard did: the message ids it moved or deleted, and the ids asked
    for that were not dead letters (checked before anything is changed)."""

    message_ids: list[str]
    not_found: list[str]

    @property
    def count(self) -> int:
        return len(self.message_ids)


class DeadLetters:
    """Retry (re-enqueue) or discard dead letters, each exactly once."""

    def __init__(self, client: redis.Redis, namespace: str = NAMESPACE) -> None:
        self._redis = client
        self._ns = namespace
        self._inspector = BrokerInspector(client, namespace)
        self._retry = client.register_script(_RETRY)
        self._discard = client.register_script(_DISCARD)

    def _key(self, queue: str, suffix: str = "") -> str:
        return f"{self._ns}:{queue}{suffix}"

    def retry(self, message_ids: Collection[str] | None = None, *,
              actor: str | None = None) -> Repair:
        """Put dead letters back on their queue (all of them when `message_ids` is None),
        with a fresh enqueue time and their retry count kept: like Sidekiq's retry of a dead
        job, that is one more attempt, then back to the dead set if it fails again."""

        def apply(queue: str, batch: list[tuple[str, bytes]]) -> list[str]:
            argv: list[str | bytes] = []
            for redis_id, raw in batch:
                new_id = str(uuid.uuid4())
                argv += [redis_id, new_id, _requeued(raw, queue, new_id)]
            keys = [self._key(queue, ".XQ"), self._key(queue, ".XQ.msgs"),
                    self._key(queue, ".msgs"), self._key(queue)]
            return [_text(i) for i in self._retry(keys=keys, args=argv)]

        return self._repair(message_ids, actor, apply, decodable_only=True)

    def discard(self, message_ids: Collection[str] | None = None, *,
                actor: str | None = None) -> Repair:
        """Delete dead letters for good (all of them when `message_ids` is None)."""

        def apply(queue: str, batch: list[tuple[str, bytes]]) -> list[str]:
            keys = [self._key(queue, ".XQ"), self._key(queue, ".XQ.msgs")]
            removed = self._discard(keys=keys, args=[redis_id for redis_id, _ in batch])
            return [_text(i) for i in removed]

        return self._repair(message_ids, actor, apply, decodable_only=False)

    def _repair(self, message_ids: Collection[str] | None, actor: str | None,
                apply: Callable[[str, list[tuple[str, bytes]]], list[str]], *,
                decodable_only: bool) -> Repair:
        wanted = None if message_ids is None else set(message_ids)
        if wanted is not None:
            found = {m.message_id for _, m, _ in self._select(wanted, actor, decodable_only)}
            missing = sorted(wanted - found)
            if missing:
                return Repair([], missing)
        # Only what was dead when we started: a message retried here that dies again at
        # once is a new dead letter, left for the operator rather than retried in a loop.
        before_ms = time.time() * 1000
        done: list[str] = []
        for queue, chunk in self._windows(self._select(wanted, actor, decodable_only,
                                                       before_ms=before_ms)):
            by_redis_id = {redis_id: message.message_id for redis_id, message, _ in chunk}
            moved = apply(queue, [(redis_id, raw) for redis_id, _, raw in chunk])
            done += [by_redis_id[i] for i in moved]
        return Repair(done, [])

    def _select(self, wanted: set[str] | None, actor: str | None, decodable_only: bool, *,
                before_ms: float | None = None) -> Iterator[tuple[str, BrokerMessage, bytes]]:
        """(redis id, message, raw) of each matching dead letter, queue by queue, read in
        windows (ZSCAN + HMGET): memory stays bounded whatever the size of the set."""
        for queue in self._inspector.queues():
            dead_key = self._key(queue, ".XQ")
            scored = self._redis.zscan_iter(dead_key, count=WINDOW)
            for window in _batched(scored, WINDOW):
                members = [(_text(m), float(score)) for m, score in window
                           if before_ms is None or float(score) <= before_ms]
                if not members:
                    continue
                raws = self._redis.hmget(self._key(queue, ".XQ.msgs"), [m for m, _ in members])
                for (redis_id, score), raw in zip(members, raws, strict=True):
                    if raw is None:
                        continue
                    message = _message(raw, queue, State.DEAD, failed_ms=score,
                                       redis_id=redis_id)
                    if decodable_only and not _decode(raw):
                        continue
                    if actor is not None and message.actor != actor:
                        continue
                    if wanted is not None and message.message_id not in wanted:
                        continue
                    yield redis_id, message, cast(bytes, raw)

    @staticmethod
    def _windows(selected: Iterable[tuple[str, BrokerMessage, bytes]]
                 ) -> Iterator[tuple[str, list[tuple[str, BrokerMessage, bytes]]]]:
        """Consecutive selections of one queue, at most WINDOW at a time."""
        for queue, group in itertools.groupby(selected, key=lambda s: s[1].queue):
            for chunk in _batched(group, WINDOW):
                yield queue, chunk


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _requeued(raw: bytes, queue: str, redis_id: str) -> bytes:
    """The dead message as dramatiq would enqueue it again: same message id, args and retry
    count, on its canonical queue, enqueued now (so AgeLimit counts from the retry)."""
    message = Message.decode(raw)
    options = {k: v for k, v in message.options.items() if k not in _ENQUEUE_OPTIONS}
    options["redis_message_id"] = redis_id
    return dataclasses.replace(
        message, queue_name=queue, options=options, message_timestamp=int(time.time() * 1000)
    ).encode()
