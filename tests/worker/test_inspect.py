"""Broker inspection against a real Redis broker: what dramatiq really wrote, read back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from worker.broker import create_broker
from worker.inspect import BrokerInspector, State

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
