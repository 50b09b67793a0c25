"""Broker inspection against a real Redis broker: what dramatiq really wrote, read back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from worker.broker import create_broker
from worker.inspect import MAX_DEAD_SCANNED, WINDOW, BrokerInspector, State
from worker.inspect._dead_scan import CALL_BUDGET
from worker.inspect._layout import decode

QUEUE = "inspect-q"


@pytest.fixture
def own_broker(redis_url: str) -> Iterator[RedisBroker]:
    """A broker nobody consumes from: every message stays where the test put it."""
    broker = create_broker(redis_url)
    broker.declare_queue(QUEUE)
    yield broker
    broker.close()


def send(broker: RedisBroker, actor: str, *args: Any, delay: int | None = None) -> Message[Any]:
    message: Message[Any] = Message(queue_name=QUEUE, actor_name=actor, args=args, kwargs={},
                                    options={})
    return broker.enqueue(message, delay=delay)


def test_depths_messages_and_dead_letters(own_broker: RedisBroker, redis_client: Any) -> None:
    inspector = BrokerInspector(redis_client)
    sent = [send(own_broker, "alpha", i) for i in range(5)]
    send(own_broker, "beta", "late", delay=60_000)
    # A consumer takes the two oldest: one it rejects (a real dead letter), one it holds.
    consumer = own_broker.consume(QUEUE, prefetch=2, timeout=1000)
    taken = [next(m for m in consumer if m is not None) for _ in range(2)]
    consumer.nack(taken[0])
    try:
        assert QUEUE in inspector.queues() and "default" in inspector.queues()
        assert inspector.depth(QUEUE).as_dict() == {
            "ready": 3, "delayed": 1, "in_progress": 1, "dead": 1}
        assert inspector.depths()[QUEUE] == inspector.depth(QUEUE)

        first = inspector.messages(State.QUEUED, QUEUE, limit=2)
        assert first.total == 3 and first.next_offset == 2
        assert [m.args for m in first.items] == [[4], [3]]  # newest first
        rest = inspector.messages(State.QUEUED, QUEUE, offset=2, limit=2)
        assert [m.args for m in rest.items] == [[2]] and rest.next_offset is None
        assert {m.message_id for m in first.items + rest.items} == {
            m.message_id for m in sent[2:]}
        assert all(m.actor == "alpha" and m.enqueued_at is not None for m in first.items)

        delayed = inspector.messages(State.DELAYED, QUEUE)
        assert [(m.actor, m.args, m.state) for m in delayed.items] == [
            ("beta", ["late"], State.DELAYED)]

        dead = inspector.messages(State.DEAD, QUEUE)
        assert dead.total == 1
        assert dead.items[0].message_id == taken[0].message_id
        assert dead.items[0].failed_at is not None
        assert inspector.dead_by_actor() == {"alpha": 1}
        assert inspector.dead_by_actor(limit=0) == {}  # a lower bound past the limit
    finally:
        consumer.close()


def test_oldest_ready_age(own_broker: RedisBroker, redis_client: Any) -> None:
    inspector = BrokerInspector(redis_client)
    assert inspector.oldest_ready_age_s(QUEUE) == 0.0
    oldest = send(own_broker, "alpha", 1)
    send(own_broker, "alpha", 2)
    enqueued_s = oldest.message_timestamp / 1000
    assert inspector.oldest_ready_age_s(QUEUE, now=enqueued_s + 5) == pytest.approx(5)


def test_paging_arguments_are_checked(redis_client: Any) -> None:
    with pytest.raises(ValueError, match="offset"):
        BrokerInspector(redis_client).messages(State.QUEUED, QUEUE, limit=0)


def _dead(client: Any, queue: str, redis_id: str, died_ms: int, raw: bytes) -> None:
    """A dead letter as dramatiq's nack leaves it: the member scored by death, the body."""
    client.zadd(f"dramatiq:{queue}.XQ", {redis_id: died_ms})
    client.hset(f"dramatiq:{queue}.XQ.msgs", redis_id, raw)


def _decoded_counts(client: Any, inspector: BrokerInspector, limit: int) -> dict[str, int]:
    """What decoding every message in HSCAN order gives: the answer to match exactly."""
    counts: dict[str, int] = {}
    scanned = 0
    for queue in inspector.queues():
        for _, raw in client.hscan_iter(f"dramatiq:{queue}.XQ.msgs", count=WINDOW):
            scanned += 1
            if scanned > limit:
                return counts
            actor = str(decode(raw).get("actor_name", "<undecodable>"))
            counts[actor] = counts.get(actor, 0) + 1
    return counts


def test_dead_letters_counted_and_found_in_redis_as_decoding_would(redis_client: Any) -> None:
    # More than one script call's worth, with every head the scripts leave to Python:
    # escaped and non-ASCII actor names, a non-string first argument, no JSON at all.
    order_ids = [str(uuid.uuid4()) for _ in range(CALL_BUDGET + 500)]
    actors = ["fulfil_order", "send_email", "caf\u00e9", 'say "hi"']
    pipe = redis_client.pipeline(transaction=False)
    for i, order_id in enumerate(order_ids):
        message = Message(queue_name="default", actor_name=actors[i % 4],
                          args=(order_id,) if i % 7 else (i,), kwargs={},
                          options={"traceback": "RuntimeError: x"})
        _dead(pipe, "default", f"r{i}", 1_000 + i, message.encode())
    _dead(pipe, "default", "junk", 9_000, b"fulfil_order but no JSON")
    other = Message(queue_name="other", actor_name="fulfil_order", args=(order_ids[4],),
                    kwargs={}, options={})
    _dead(pipe, "other", "o1", 9_500, other.encode())
    pipe.execute()
    inspector = BrokerInspector(redis_client)

    everything = _decoded_counts(redis_client, inspector, MAX_DEAD_SCANNED)
    assert inspector.dead_by_actor() == everything and everything["<undecodable>"] == 1
    assert sum(everything.values()) == len(order_ids) + 2
    # Past the limit, a lower bound: which messages a scan meets first depends on the
    # hash's layout at that moment (Redis rehashes as it goes), so two scans are compared
    # by what they must share.
    for limit in (0, 1, CALL_BUDGET, len(order_ids)):
        counts = inspector.dead_by_actor(limit=limit)
        assert sum(counts.values()) == limit
        assert all(n <= everything[actor] for actor, n in counts.items())

    fulfil = [(i, o) for i, o in enumerate(order_ids) if i % 4 == 0]
    newest_first = [o for i, o in reversed(fulfil) if i % 7]
    found = inspector.find_dead("fulfil_order", [*newest_first[:60], "0", "None"])
    # A non-string first argument is matched as its text (order_ids[0] died as 0).
    assert set(found) == {*newest_first[:60], "0"}
    assert all(found[o].args == [o] and found[o].queue == "default"
               for o in newest_first[:60])
    assert inspector.find_dead("fulfil_order", [order_ids[4]])[order_ids[4]].queue in {
        "default", "other"}
    # At most `limit` messages naming the actor per queue, newest first: here the junk
    # and 29 of the actor's, then the other queue's one.
    within = {o for i, o in list(reversed(fulfil))[:29] if i % 7} | {order_ids[4]}
    assert set(inspector.find_dead("fulfil_order", newest_first, limit=30)) == within
    assert inspector.find_dead("send_email", [order_ids[8], order_ids[12]]) == {}
    assert inspector.find_dead("fulfil_order", []) == {}

    # Filtered by actor, the dead sets are matched in Redis too: same total, same page.
    dead = [(raw, float(score), queue) for queue in inspector.queues()
            for member, score in redis_client.zrevrange(f"dramatiq:{queue}.XQ", 0, -1,
                                                        withscores=True)
            if (raw := redis_client.hget(f"dramatiq:{queue}.XQ.msgs", member)) is not None]
    mine = sorted(((score, queue, decode(raw)) for raw, score, queue in dead
                   if decode(raw).get("actor_name") == "fulfil_order"), key=lambda d: -d[0])
    for actor, offset in (("fulfil_order", 0), ("fulfil_order", 37), ('say "hi"', 0)):
        page = inspector.search([State.DEAD], actor=actor, offset=offset, limit=20)
        if actor == "fulfil_order":
            assert page.total == len(mine)
            assert [m.message_id for m in page.items] == [
                d["message_id"] for _, _, d in mine[offset:offset + 20]]
        else:  # its name is escaped in the message: never a match, as when decoding
            assert page.total == 0 and page.items == []
