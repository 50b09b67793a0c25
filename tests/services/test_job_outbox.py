"""Transactional job outbox: staged with the change, sent after commit, relayed later if the
broker was down."""

from __future__ import annotations

import json

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import func, select

from db.models import JobOutbox
from services import job_outbox


def _pending(sessions) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(JobOutbox)))


def _queued(redis_client, queue: str = "default") -> int:
    return int(redis_client.hlen(f"dramatiq:{queue}.msgs"))


def test_rolled_back_change_sends_nothing(sessions, broker, redis_client) -> None:
    with sessions() as s:
        s.begin()
        job_outbox.stage(s, "send_email", "a@b.c", "hi", "body")
        s.rollback()
    assert _pending(sessions) == 0
    assert _queued(redis_client) == 0


def test_dispatch_after_commit_sends_and_deletes(sessions, broker, redis_client) -> None:
    with sessions() as s, s.begin():
        row_id = job_outbox.stage(s, "send_email", "a@b.c", "hi", "body")
    assert job_outbox.dispatch(sessions, broker, [row_id]) == 1
    assert _pending(sessions) == 0
    assert _queued(redis_client) == 1


def test_dead_broker_leaves_job_for_the_relay(
    sessions, broker, redis_client, dead_redis_url
) -> None:
    dead = RedisBroker(client=redis.Redis.from_url(dead_redis_url, socket_connect_timeout=0.2))
    with sessions() as s, s.begin():
        row_id = job_outbox.stage(s, "send_email", "a@b.c", "hi", "body")
    assert job_outbox.dispatch(sessions, dead, [row_id]) == 0
    assert _pending(sessions) == 1
    # The broker is back: the sweeper relays what was left, exactly once.
    assert job_outbox.relay(sessions, broker, min_age_s=0) == 1
    assert job_outbox.relay(sessions, broker, min_age_s=0) == 0
    assert _pending(sessions) == 0
    assert _queued(redis_client) == 1


def _stored(redis_client, queue: str = "default") -> list[dict]:
    """The messages on a queue as dramatiq stores them, in queue order."""
    ids = redis_client.lrange(f"dramatiq:{queue}", 0, -1)
    return [json.loads(redis_client.hget(f"dramatiq:{queue}.msgs", i)) for i in ids]


def test_send_many_stores_in_order_exactly_what_enqueue_stores(broker, redis_client) -> None:
    job_outbox.send(broker, "process_webhook_event", "alone")
    job_outbox.send_many(broker, "process_webhook_event", [(f"id-{i}",) for i in range(300)])
    one, *many = _stored(redis_client)
    assert [m["args"] for m in many] == [[f"id-{i}"] for i in range(300)]
    for message in many:
        assert message.keys() == one.keys()
        assert message.keys() == {"queue_name", "actor_name", "args", "kwargs", "options",
                                  "message_id", "message_timestamp"}
        assert {k: message[k] for k in ("queue_name", "actor_name", "kwargs")} == \
               {k: one[k] for k in ("queue_name", "actor_name", "kwargs")}
        assert message["options"].keys() == one["options"].keys() == {"redis_message_id"}
    # Every message has its own redis id, and the list holds exactly those ids.
    assert len({m["options"]["redis_message_id"] for m in [one, *many]}) == 301
    assert redis_client.lrange("dramatiq:default", 0, -1) == [
        m["options"]["redis_message_id"].encode() for m in [one, *many]]

    # A consumer takes them in that order and acknowledges them like any other message.
    consumer = broker.consume("default", prefetch=400, timeout=1000)
    taken = [next(consumer) for _ in range(301)]
    assert [m.args for m in taken] == [("alone",), *[(f"id-{i}",) for i in range(300)]]
    for message in taken:
        consumer.ack(message)
    consumer.close()
    assert _queued(redis_client) == 0


def test_send_many_raises_when_redis_refuses(dead_redis_url) -> None:
    dead = RedisBroker(client=redis.Redis.from_url(dead_redis_url, socket_connect_timeout=0.2))
    with pytest.raises(redis.ConnectionError):
        job_outbox.send_many(dead, "process_webhook_event", [("a",), ("b",)])
