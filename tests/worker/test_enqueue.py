"""`worker.enqueue`: jobs staged in a transaction are sent after its commit, and only then;
actor names are an enum that matches the actors `jobs` declares."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis as redis_lib
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker

from db.models import JobOutbox
from services import job_outbox
from worker.broker import create_broker
from worker.enqueue import Actor, enqueue, send_many_now, send_now


def _outbox(sessions: Any) -> list[tuple[str, list[Any], int]]:
    with sessions() as s:
        rows = s.scalars(select(JobOutbox).order_by(JobOutbox.id)).all()
        return [(r.actor_name, r.args, r.attempts) for r in rows]


def _queued(redis_client: redis_lib.Redis) -> list[tuple[str, tuple[Any, ...]]]:
    """The messages waiting in the default queue, oldest first, as (actor, args)."""
    encoded = redis_client.hgetall("dramatiq:default.msgs")
    order = [i.decode() for i in redis_client.lrange("dramatiq:default", 0, -1)]
    by_id = {k.decode(): dramatiq.Message.decode(v) for k, v in encoded.items()}
    return [(by_id[i].actor_name, tuple(by_id[i].args)) for i in order]


@pytest.fixture
def dead_broker(dead_redis_url: str) -> Iterator[Any]:
    dead = create_broker(dead_redis_url)
    yield dead
    dead.client.close()


def test_actor_enum_is_exactly_the_declared_actors(broker: Any) -> None:
    import jobs  # noqa: F401  (declares every actor on the broker)

    declared = {
        name for name in broker.get_declared_actors()
        # other test modules declare probes on the same broker
        if broker.get_actor(name).fn.__module__.startswith("jobs.")
    }
    assert declared == {actor.value for actor in Actor}
    assert len(Actor) == 10


def test_sent_after_commit_and_not_before(sessions: Any, broker: Any, redis_client: Any) -> None:
    with sessions() as s, s.begin():
        enqueue(s, broker, Actor.SEND_EMAIL, "a@example.com", "hi", "body")
        enqueue(s, broker, Actor.FULFIL_ORDER, "order-1")
        # Staged with the change, invisible to the broker until the commit.
        assert [a for a, _, _ in _outbox(sessions)] == []  # uncommitted: another session
        assert _queued(redis_client) == []
    assert _queued(redis_client) == [
        ("send_email", ("a@example.com", "hi", "body")),
        ("fulfil_order", ("order-1",)),
    ]
    assert _outbox(sessions) == []  # handed over, so deleted


def test_rollback_forgets_the_job(sessions: Any, broker: Any, redis_client: Any) -> None:
    with pytest.raises(ZeroDivisionError), sessions() as s, s.begin():
        enqueue(s, broker, Actor.FULFIL_ORDER, "order-1")
        enqueue(s, broker, Actor.PROCESS_WEBHOOK_EVENT, "evt-1")
        1 / 0  # noqa: B018  (the change fails after the jobs were enqueued)
    assert _outbox(sessions) == []
    assert _queued(redis_client) == []
    # The session is reusable, and a later commit does not resurrect the forgotten jobs.
    with sessions() as s:
        s.begin()
        enqueue(s, broker, Actor.FULFIL_ORDER, "order-2")
        s.rollback()
        with s.begin():
            enqueue(s, broker, Actor.FULFIL_ORDER, "order-3")
    assert _queued(redis_client) == [("fulfil_order", ("order-3",))]


def test_savepoints_decide_with_the_enclosing_transaction(sessions: Any, broker: Any,
                                                          redis_client: Any) -> None:
    with sessions() as s, s.begin():
        with s.begin_nested():
            enqueue(s, broker, Actor.FULFIL_ORDER, "kept")
            enqueue(s, broker, Actor.PROCESS_WEBHOOK_EVENT, "kept-event")
        assert _queued(redis_client) == []  # a released savepoint is not a commit
        savepoint = s.begin_nested()
        enqueue(s, broker, Actor.FULFIL_ORDER, "undone")
        enqueue(s, broker, Actor.PROCESS_WEBHOOK_EVENT, "undone-event")
        savepoint.rollback()
    assert sorted(_queued(redis_client)) == [
        ("fulfil_order", ("kept",)), ("process_webhook_event", ("kept-event",))]
    assert _outbox(sessions) == []


def test_dead_broker_leaves_the_job_for_the_relay(sessions: Any, broker: Any,
                                                  dead_broker: Any, redis_client: Any) -> None:
    with sessions() as s, s.begin():  # commits without raising: the change is what counts
        enqueue(s, dead_broker, Actor.SEND_EMAIL, "a@example.com", "hi", "body")
        enqueue(s, dead_broker, Actor.FULFIL_ORDER, "order-1")
    # The first refusal stops the batch (the second would meet the same broker).
    assert _outbox(sessions) == [("send_email", ["a@example.com", "hi", "body"], 1),
                                 ("fulfil_order", ["order-1"], 0)]
    assert job_outbox.relay(sessions, broker, min_age_s=0) == 2
    assert _outbox(sessions) == []
    assert [actor for actor, _ in _queued(redis_client)] == ["send_email", "fulfil_order"]


def test_a_swept_actor_needs_no_outbox_row(sessions: Any, broker: Any, dead_broker: Any,
                                           redis_client: Any) -> None:
    # process_webhook_event mirrors an inbox row that the sweeper re-sends while unprocessed.
    with sessions() as s, s.begin():
        enqueue(s, dead_broker, Actor.PROCESS_WEBHOOK_EVENT, "evt-lost")
    with sessions() as s, s.begin():
        enqueue(s, broker, Actor.PROCESS_WEBHOOK_EVENT, "evt-1")
        assert s.scalar(select(func.count()).select_from(JobOutbox)) == 0
    assert _outbox(sessions) == []
    assert _queued(redis_client) == [("process_webhook_event", ("evt-1",))]


def test_dispatch_waits_for_the_connection_to_return_to_the_pool(
    database_url: str, broker: Any, redis_client: Any
) -> None:
    # One pooled connection, no overflow: dispatching while the committing session still
    # held its connection would wait for a second one and time out.
    engine = create_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=2)
    try:
        one = sessionmaker(engine, expire_on_commit=False)
        with one() as s, s.begin():
            enqueue(s, broker, Actor.FULFIL_ORDER, "order-1")
        assert _queued(redis_client) == [("fulfil_order", ("order-1",))]
        assert _outbox(one) == []
    finally:
        engine.dispose()


def test_bad_calls_are_refused_clearly(sessions: Any, broker: Any) -> None:
    with sessions() as s:
        with pytest.raises(RuntimeError, match="needs an open transaction"):
            enqueue(s, broker, Actor.FULFIL_ORDER, "order-1")
        with s.begin(), pytest.raises(TypeError, match="Actor member"):
            enqueue(s, broker, "fulfil_order", "order-1")  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        Actor.FULFILL_ORDER  # type: ignore[attr-defined]  # noqa: B018
    assert _outbox(sessions) == []


def test_send_now_reports_a_refusal(broker: Any, dead_broker: Any, redis_client: Any) -> None:
    send_now(broker, Actor.MIGRATE_GUEST_DATA, "sid", "user")
    assert _queued(redis_client) == [("migrate_guest_data", ("sid", "user"))]
    with pytest.raises(redis_lib.ConnectionError):
        send_now(dead_broker, Actor.MIGRATE_GUEST_DATA, "sid", "user")


def _stored(redis_client: redis_lib.Redis) -> list[dict[str, Any]]:
    """The default queue's messages as dramatiq stores them, in queue order."""
    ids = redis_client.lrange("dramatiq:default", 0, -1)
    return [json.loads(redis_client.hget("dramatiq:default.msgs", i) or b"") for i in ids]


def test_send_many_now_stores_in_order_exactly_what_enqueue_stores(
    broker: Any, redis_client: Any
) -> None:
    send_now(broker, Actor.PROCESS_WEBHOOK_EVENT, "alone")
    send_many_now(broker, Actor.PROCESS_WEBHOOK_EVENT, [(f"id-{i}",) for i in range(300)])
    one, *many = _stored(redis_client)
    assert [m["args"] for m in many] == [[f"id-{i}"] for i in range(300)]
    fields = {"queue_name", "actor_name", "args", "kwargs", "options", "message_id",
              "message_timestamp"}
    for message in [one, *many]:
        assert message.keys() == fields
        assert (message["queue_name"], message["actor_name"], message["kwargs"]) == \
               ("default", "process_webhook_event", {})
        assert message["options"].keys() == {"redis_message_id"}
    # Every message has its own redis id, and the list holds exactly those ids.
    redis_ids = [m["options"]["redis_message_id"] for m in [one, *many]]
    assert len(set(redis_ids)) == 301
    assert redis_client.lrange("dramatiq:default", 0, -1) == [i.encode() for i in redis_ids]

    # A consumer takes them in that order and acknowledges them like any other message.
    consumer = broker.consume("default", prefetch=400, timeout=1000)
    taken = [next(consumer) for _ in range(301)]
    assert [m.args for m in taken] == [("alone",), *[(f"id-{i}",) for i in range(300)]]
    for message in taken:
        consumer.ack(message)
    consumer.close()
    assert redis_client.hlen("dramatiq:default.msgs") == 0


def test_send_many_now_raises_when_redis_refuses_and_only_for_swept_actors(
    broker: Any, dead_broker: Any
) -> None:
    with pytest.raises(redis_lib.ConnectionError):
        send_many_now(dead_broker, Actor.PROCESS_WEBHOOK_EVENT, [("a",), ("b",)])
    with pytest.raises(ValueError, match="no sweeper"):  # a lost job would stay lost
        send_many_now(broker, Actor.FULFIL_ORDER, [("order",)])
