"""Reading the broker: queue depths, pages of messages, dead letters per actor.

Every call is a bounded number of round trips; paging is by offset, newest first. Listing
(`search`) reads windows of `WINDOW` ids (LRANGE from the tail, ZREVRANGE, HSCAN), never a
whole list, hash or sorted set; dead letters counted per actor, or searched by actor or
first argument, are read inside Redis by `_dead_scan`'s scripts. Nothing here writes.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import cast

import redis

from worker.inspect._dead_scan import find_candidates, scan_actors
from worker.inspect._layout import (
    NAMESPACE,
    WINDOW,
    BrokerMessage,
    Page,
    QueueDepth,
    State,
    decode,
    message_from,
    redis_key,
    text,
)

# Dead letters read to count them per actor; past this many we report a lower bound.
MAX_DEAD_SCANNED = 10_000
# A filtered listing (by actor) decodes at most this many messages per queue and state to
# count its matches; past it the total is a lower bound.
MAX_FILTER_SCANNED = 100_000


class BrokerInspector:
    """Queue depths, messages and dead letters of one Redis broker (never modifies it)."""

    def __init__(self, client: redis.Redis, namespace: str = NAMESPACE) -> None:
        self._redis = client
        self._ns = namespace

    def _key(self, queue: str, suffix: str = "") -> str:
        return redis_key(self._ns, queue, suffix)

    def queues(self) -> list[str]:
        """Every queue that holds or held messages (`default` always)."""
        # dramatiq keeps no registry of queues in Redis; every queue that ever held a
        # message has a `.msgs` hash. SCAN (never KEYS) keeps Redis responsive.
        names = {"default"}
        for key in self._redis.scan_iter(match=f"{self._ns}:*.msgs", count=1000):
            name = text(key).removeprefix(f"{self._ns}:").removesuffix(".msgs")
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
        enqueued = None if raw is None else decode(raw).get("message_timestamp")
        if enqueued is None:
            return 0.0
        return max((now if now is not None else time.time()) - float(enqueued) / 1000, 0.0)

    def dead_by_actor(self, *, limit: int = MAX_DEAD_SCANNED,
                      queues: Iterable[str] | None = None) -> dict[str, int]:
        """Dead-lettered messages per actor over every queue, or over `queues` (a lower
        bound past `limit`). Counted inside Redis (`_dead_scan`): only the counts, and the
        rare message whose head is not plain, come back."""
        per_actor: dict[str, int] = {}
        allowed = limit
        for queue in (sorted(set(queues)) if queues is not None else self.queues()):
            for scan in scan_actors(self._redis, self._ns, queue, allowed):
                fields = [item for item in scan.order if isinstance(item, bytes)]
                raws = dict(zip(fields, self._redis.hmget(self._key(queue, ".XQ.msgs"), fields),
                                strict=True)) if fields else {}
                for item in scan.order:
                    if isinstance(item, str):
                        per_actor[item] = per_actor.get(item, 0) + scan.counts[item]
                    else:
                        actor = str(decode(raws[item]).get("actor_name", "<undecodable>"))
                        per_actor[actor] = per_actor.get(actor, 0) + 1
                allowed -= scan.read
                if scan.truncated:
                    return per_actor
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
            return Page([message_from(r, queue, state) for r in raws if r is not None], total,
                        offset)
        if state is State.DEAD:
            key = self._key(queue, ".XQ")
            total = int(self._redis.zcard(key))
            scored = cast(list[tuple[bytes, float]], self._redis.zrevrange(
                key, offset, offset + limit - 1, withscores=True))
            raws = (self._redis.hmget(self._key(queue, ".XQ.msgs"), [i for i, _ in scored])
                    if scored else [])
            return Page([message_from(raw, queue, state, failed_ms=score)
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
                if actor is not None and state is State.DEAD:
                    # The set that grows large: matched inside Redis (`_dead_scan`).
                    count, newest = self._dead_of(queue, actor, wanted)
                    total += count
                    candidates += newest
                    continue
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

    def _dead_of(self, queue: str, actor: str, wanted: int) -> tuple[int, list[BrokerMessage]]:
        """How many of `queue`'s dead letters are `actor`'s (among the first
        MAX_FILTER_SCANNED naming it, newest first) and the newest `wanted` of them."""
        count = 0
        newest: list[BrokerMessage] = []
        for call in find_candidates(self._redis, self._ns, queue, actor, (),
                                    MAX_FILTER_SCANNED, keep=wanted):
            count += call.matched
            for redis_id, score, raw, plain in call.hits:
                stored = _Stored(raw, queue, State.DEAD, redis_id, score)
                if not plain:
                    if stored.actor() != actor:
                        continue
                    count += 1
                if len(newest) < wanted:
                    newest.append(stored.message())
        return count, newest

    def find_dead(self, actor: str, first_args: Collection[str], *,
                  limit: int = MAX_DEAD_SCANNED) -> dict[str, BrokerMessage]:
        """The newest dead letter of `actor` for each of `first_args` (its first argument,
        e.g. an order id), reading at most `limit` of the actor's dead letters per queue,
        newest first. Matched inside Redis (`_dead_scan`): only candidates come back."""
        found: dict[str, BrokerMessage] = {}
        wanted = set(first_args)
        if not wanted:
            return found
        for queue in self.queues():
            hits = (hit for call in find_candidates(self._redis, self._ns, queue, actor,
                                                    sorted(wanted), limit)
                    for hit in call.hits)
            for redis_id, score, raw, _ in hits:
                if len(found) == len(wanted):
                    return found
                stored = _Stored(raw, queue, State.DEAD, redis_id, score)
                if stored.actor() != actor:
                    continue
                args = decode(raw).get("args") or [None]
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
        name = decode(self.raw).get("actor_name")
        return None if name is None else str(name)

    def message(self) -> BrokerMessage:
        return message_from(self.raw, self.queue, self.state, failed_ms=self.score,
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


def _may_be(raw: object, actor: str | None) -> bool:
    """Whether a stored message may be one of `actor`'s (always, without a filter)."""
    if raw is None:
        return False
    return actor is None or not isinstance(raw, bytes) or actor.encode() in raw
