"""Repairing dead letters: retry (re-enqueue) or discard them, each exactly once.

One Lua script per window: a message leaves the dead set (ZREM answered 1) and is pushed
onto its queue in the same atomic step, so two operators retrying at once re-enqueue it
once, and a crash never loses or doubles it.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import redis
from dramatiq import Message

from worker.inspect._layout import (
    NAMESPACE,
    WINDOW,
    BrokerMessage,
    State,
    decode,
    message_from,
    redis_key,
    text,
)
from worker.inspect.reader import BrokerInspector

# Options that belong to one enqueue (or one failure), dropped when a dead letter is retried.
# The traceback stays: it is the last error known until the next attempt fails.
_ENQUEUE_OPTIONS = ("redis_message_id", "eta", "requeue_timestamp")

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
        return redis_key(self._ns, queue, suffix)

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
            return [text(i) for i in self._retry(keys=keys, args=argv)]

        return self._repair(message_ids, actor, apply, decodable_only=True)

    def discard(self, message_ids: Collection[str] | None = None, *,
                actor: str | None = None) -> Repair:
        """Delete dead letters for good (all of them when `message_ids` is None)."""

        def apply(queue: str, batch: list[tuple[str, bytes]]) -> list[str]:
            keys = [self._key(queue, ".XQ"), self._key(queue, ".XQ.msgs")]
            removed = self._discard(keys=keys, args=[redis_id for redis_id, _ in batch])
            return [text(i) for i in removed]

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
                members = [(text(m), float(score)) for m, score in window
                           if before_ms is None or float(score) <= before_ms]
                if not members:
                    continue
                raws = self._redis.hmget(self._key(queue, ".XQ.msgs"), [m for m, _ in members])
                for (redis_id, score), raw in zip(members, raws, strict=True):
                    if raw is None:
                        continue
                    message = message_from(raw, queue, State.DEAD, failed_ms=score,
                                       redis_id=redis_id)
                    if decodable_only and not decode(raw):
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
