"""Scans of a dead-letter set done inside Redis: only the answer crosses the wire.

Counting 10,000 dead letters per actor, or finding the dead letter of each order on a page,
by reading every message into Python costs ~200 ms (parsing redis-py's replies, then the
JSON), at every refresh of the console. These Lua scripts read the messages where they
are, take the actor (and the first argument) from the head of each message as dramatiq
encodes it (`{"queue_name":"…","actor_name":"…","args":["…"`), and return counts or the
few matches. A message whose head has another shape (escapes, a non-string argument,
another encoder) is handed back to be decoded in Python, so every answer is the one
decoding each message would give. One call reads at most `CALL_BUDGET` messages: Redis
is never blocked for more than a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass

import redis

from worker.inspect._layout import WINDOW, redis_key, text

# Messages read per script call (a few ms of Redis time; a window at most per HSCAN/HMGET).
CALL_BUDGET = 4 * WINDOW

# Lua patterns (bytes: the class holds raw bytes 0x80-0xff) of a JSON string with nothing
# to unescape (no quote, backslash, control or non-ASCII byte): such a string's bytes are
# its value. HEAD captures the actor of a message as dramatiq's JSONEncoder writes it,
# HEAD_ARGS the actor and a string first argument.
_PLAIN = b'"[^"\\%c\x80-\xff]*"'
_CAPTURE = b'"([^"\\%c\x80-\xff]*)"'
HEAD = b'^{"queue_name":' + _PLAIN + b',"actor_name":' + _CAPTURE
HEAD_ARGS = HEAD + b',"args":%[' + _CAPTURE

# KEYS: the dead set's hash. ARGV: HSCAN cursor, messages still allowed, call budget,
# HSCAN count, HEAD. Returns {cursor, read, truncated, seen, counts}: `seen` lists, in scan
# order, each actor where its first plain head was met and every other message as {its
# field}; `counts` is actor, n, actor, n… of the plain heads.
_COUNT_ACTORS = """
local cursor, allowed, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local window, head = ARGV[4], ARGV[5]
local counts, seen, read, truncated = {}, {}, 0, 0
repeat
    local page = redis.call('hscan', KEYS[1], cursor, 'COUNT', window)
    cursor = page[1]
    local entries = page[2]
    for i = 1, #entries, 2 do
        if read >= allowed then
            cursor, truncated = '0', 1
            break
        end
        read = read + 1
        local actor = string.match(entries[i + 1], head)
        if actor == nil then
            seen[#seen + 1] = {entries[i]}
        else
            if counts[actor] == nil then
                counts[actor] = 0
                seen[#seen + 1] = actor
            end
            counts[actor] = counts[actor] + 1
        end
    end
until cursor == '0' or read >= budget
local flat = {}
for actor, n in pairs(counts) do
    flat[#flat + 1] = actor
    flat[#flat + 1] = n
end
return {cursor, read, truncated, seen, flat}
"""

# KEYS: the dead set, its hash. ARGV: first rank, ranks to read, candidates still allowed,
# window, HEAD_ARGS, actor, matches to return, wanted first arguments (none: any)…
# Newest first; a candidate is a message whose bytes contain the actor's name. Returns
# {ranks read, candidates, exhausted, matched, hits}: `matched` counts the plain heads of
# `actor` (for a wanted argument), each hit {id, score, raw, plain} is one of the first
# `matches to return` of them or a candidate whose head is not plain (Python decides).
_FIND = """
local start, count, allowed = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window, pattern, actor, keep = tonumber(ARGV[4]), ARGV[5], ARGV[6], tonumber(ARGV[7])
local wanted, any = {}, #ARGV < 8
for i = 8, #ARGV do wanted[ARGV[i]] = true end
local hits, used, read, matched = {}, 0, 0, 0
while read < count do
    local want = math.min(window, count - read)
    local scored = redis.call('zrevrange', KEYS[1], start + read, start + read + want - 1,
                              'WITHSCORES')
    if #scored == 0 then break end
    local ids = {}
    for i = 1, #scored, 2 do ids[#ids + 1] = scored[i] end
    local raws = redis.call('hmget', KEYS[2], unpack(ids))
    for j = 1, #ids do
        local raw = raws[j]
        if raw and string.find(raw, actor, 1, true) then
            if used >= allowed then return {read + j - 1, used, 1, matched, hits} end
            used = used + 1
            local name, first = string.match(raw, pattern)
            if name == nil then
                hits[#hits + 1] = {ids[j], scored[2 * j], raw, 0}
            elseif name == actor and (any or wanted[first]) then
                matched = matched + 1
                if matched <= keep then hits[#hits + 1] = {ids[j], scored[2 * j], raw, 1} end
            end
        end
    end
    read = read + #ids
    if #ids < want then break end
end
return {read, used, 0, matched, hits}
"""


@dataclass
class ActorScan:
    """What one call counted: `counts` of the plain heads, and `order`, in scan order,
    each of those actors where first met and the field of every other message (bytes: to
    be decoded), so the caller rebuilds exactly the mapping a scan in Python would."""

    counts: dict[str, int]
    order: list[str | bytes]  # an actor, or the field of a message to decode
    read: int
    truncated: bool


def scan_actors(client: redis.Redis, namespace: str, queue: str, allowed: int
                ) -> Iterator[ActorScan]:
    """One `ActorScan` per call over `queue`'s dead set, at most `allowed` messages in all
    (the last scan says `truncated` when more were left)."""
    script = client.register_script(_COUNT_ACTORS)
    key = redis_key(namespace, queue, ".XQ.msgs")
    cursor: str = "0"
    while True:
        cursor_raw, read, truncated, seen, flat = script(
            keys=[key], args=[cursor, allowed, CALL_BUDGET, WINDOW, HEAD])
        counts = {text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
        order: list[str | bytes] = [item[0] if isinstance(item, list) else text(item)
                                    for item in seen]
        yield ActorScan(counts, order, int(read), bool(truncated))
        allowed -= int(read)
        cursor = text(cursor_raw)
        if truncated or cursor == "0":
            return


@dataclass
class Candidates:
    """One call's answer: how many plain heads matched, and the hits in scan order as
    (redis id, death time in ms, raw, plain) where plain ones are sure matches."""

    matched: int
    hits: list[tuple[bytes, float, bytes, bool]]


def find_candidates(client: redis.Redis, namespace: str, queue: str, actor: str,
                    first_args: Collection[str], allowed: int, *, keep: int | None = None
                    ) -> Iterator[Candidates]:
    """`queue`'s dead letters that may be `actor`'s (for one of `first_args`; any when
    empty), newest first, among at most `allowed` messages naming the actor: one
    `Candidates` per script call. `keep` bounds the plain matches returned (default: all)."""
    script = client.register_script(_FIND)
    keys = [redis_key(namespace, queue, ".XQ"), redis_key(namespace, queue, ".XQ.msgs")]
    # With any first argument, a plain head need not be followed by a string argument.
    pattern = HEAD_ARGS if first_args else HEAD
    start = 0
    while allowed > 0:
        left = CALL_BUDGET if keep is None else keep
        read, used, exhausted, matched, hits = script(
            keys=keys, args=[start, CALL_BUDGET, allowed, WINDOW, pattern, actor, left,
                             *first_args])
        yield Candidates(int(matched), [(redis_id, float(score), raw, bool(plain))
                                        for redis_id, score, raw, plain in hits])
        if keep is not None:
            keep = max(keep - sum(1 for *_, plain in hits if plain), 0)
        start += int(read)
        allowed -= int(used)
        if exhausted or int(read) < CALL_BUDGET:
            return
