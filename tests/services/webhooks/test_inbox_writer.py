"""The web's webhook insert: group commit on a loop-local pool (real Postgres, real Redis)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select

from db.models import WebhookEvent
from keysync.embedded import free_port
from services.webhooks import intake
from services.webhooks.inbox_writer import InboxWriter, store_async
from tests.helpers import wait_until
from tests.order_helpers import status_body
from web.intake import LoopPool, SweptJobSender
from worker.enqueue import Actor


def _payload() -> intake.WebhookPayload:
    return intake.parse(status_body("FAILED", order_id=uuid.uuid4()))


def _stored(resources: Any) -> list[str]:
    with resources.sessions() as s:
        return sorted(s.scalars(select(WebhookEvent.event_id)).all())


def test_concurrent_events_and_redeliveries_are_stored_and_sent_once(
    database_url: str, resources: Any
) -> None:
    ids = [f"msg_{uuid.uuid4().hex}" for _ in range(60)]
    payloads = [_payload() for _ in ids]
    sent: list[str] = []

    async def run() -> list[bool]:
        pool = LoopPool(database_url, max_size=2, name="test-intake")
        writer = InboxWriter(pool, sent.append, parallel=2)
        try:
            # Every id three times at once: most land in the same statement as their twins.
            return list(await asyncio.gather(*(
                writer.insert(msg_id, payload)
                for msg_id, payload in zip(ids * 3, payloads * 3, strict=True))))
        finally:
            await pool.close()

    stored_now = asyncio.run(run())
    assert sum(stored_now) == len(ids)
    assert all(stored_now[: len(ids)])  # the first request for an id is the one that stored it
    assert sorted(sent) == sorted(ids)
    assert _stored(resources) == sorted(ids)


def test_an_event_postgres_refuses_fails_alone(database_url: str, resources: Any) -> None:
    # json.loads reads NaN, jsonb refuses it: one poison event among good ones.
    poison = dataclasses.replace(_payload(), body={"data": {"x": float("nan")}})
    good = [(f"msg_{uuid.uuid4().hex}", _payload()) for _ in range(5)]

    async def run() -> list[Any]:
        pool = LoopPool(database_url, max_size=1, name="test-intake")
        writer = InboxWriter(pool, lambda _: None, parallel=1)
        try:
            return list(await asyncio.gather(
                *(writer.insert(m, p) for m, p in [*good[:2], ("msg_poison", poison), *good[2:]]),
                return_exceptions=True))
        finally:
            await pool.close()

    results = asyncio.run(run())
    assert isinstance(results[2], psycopg.DataError)
    assert results[:2] + results[3:] == [True] * 5
    assert _stored(resources) == sorted(m for m, _ in good)


def test_postgres_down_fails_at_once_with_an_operational_error() -> None:
    down = f"postgresql+psycopg://keysync@127.0.0.1:{free_port()}/keysync"

    async def run() -> None:
        writer = InboxWriter(LoopPool(down, max_size=1, name="t"), lambda _: None)
        await store_async(writer, "msg_down", _payload())

    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        asyncio.run(run())
    assert time.monotonic() - started < 3


def test_sender_sends_committed_ids_and_refuses_unswept_actors(
    broker: Any, resources: Any, worker_thread: Any
) -> None:
    with pytest.raises(ValueError):
        SweptJobSender(broker, Actor.FULFIL_ORDER)
    sender = SweptJobSender(broker, Actor.PROCESS_WEBHOOK_EVENT)

    async def run() -> None:
        pool = LoopPool(resources.settings.database_url, max_size=1, name="t")
        try:
            assert (await store_async(InboxWriter(pool, sender.send), "msg_sent", _payload())
                    ).status == "accepted"
        finally:
            await pool.close()

    asyncio.run(run())
    sender.close()

    def handled() -> bool:  # no such order: the worker keeps it as an orphan
        with resources.sessions() as s:
            return bool(s.scalar(select(func.count()).select_from(WebhookEvent).where(
                WebhookEvent.outcome.is_not(None))))

    wait_until(handled, 10, "the sent event handled by the worker")


def test_a_burst_beside_a_busy_event_loop_reaches_the_broker_without_spilling(
    broker: Any, redis_client: Any
) -> None:
    """The sender shares the interpreter lock with an event loop that, under a burst, never
    lets go of it: after each wait on Redis the sender gets it back only every switch
    interval. Sent one round trip per job, it kept up with a few hundred jobs a second,
    and a burst overflowed its backlog onto the sweeper; it sends what queued meanwhile in
    one round trip instead."""
    busy = threading.Event()

    def event_loop_under_load() -> None:  # pure-Python work, as parsing and verifying are
        while busy.is_set():
            pass

    busy.set()
    loop = threading.Thread(target=event_loop_under_load)
    loop.start()
    sender = SweptJobSender(broker, Actor.PROCESS_WEBHOOK_EVENT, backlog=500)
    try:
        for i in range(3000):  # ~2,000 jobs a second, in steps of 20
            sender.send(f"id-{i}")
            if i % 20 == 19:
                time.sleep(0.01)
    finally:
        busy.clear()
        loop.join()
        sender.close()
    assert redis_client.llen("dramatiq:default") == 3000
