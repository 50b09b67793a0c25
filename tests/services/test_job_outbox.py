"""Transactional job outbox: staged with the change, sent after commit, relayed later if the
broker was down."""

from __future__ import annotations

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
