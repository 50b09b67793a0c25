"""The webhook inbox insert on an event loop: group commit, one round trip per batch.

`store_async` is `intake.store` for `POST /webhooks/g2a`: the same row (`ON CONFLICT
(event_id) DO NOTHING`), the same `process_webhook_event` message after commit, the same
`WebhookReceipt`, without a thread hop or a round trip of its own per event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from services.webhooks.intake import WebhookPayload
from services.webhooks.schemas import WebhookReceipt


class ConnectionSource(Protocol):
    """Autocommit connections of the running loop (`web.intake.LoopPool`)."""

    def connection(self) -> AbstractAsyncContextManager[AsyncConnection[TupleRow]]: ...


# One statement for every event of a batch; `ON CONFLICT DO NOTHING` judges each row on
# its own, so a batch is exactly its events inserted one by one, in one round trip.
_INSERT_EVENTS = (
    "INSERT INTO webhook_events (event_id, type, payload) "
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]::jsonb[]) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)


class InboxWriter:
    """Group commit for the inbox, on one event loop.

    Events that arrive while inserts are in flight wait and go together in the next
    statement (at most `parallel` statements at once), so under load one round trip and one
    commit serve many requests, and alone an event is inserted at once. Every event is
    answered only after the statement holding it has committed (autocommit: one statement,
    one transaction), and `process_webhook_event` is sent for each inserted row, even when
    its request has gone. A failed statement fails each of its events (503 for Postgres
    down), and senders retry: the insert is idempotent; an event Postgres refuses (one it
    cannot store) fails alone.
    """

    def __init__(self, pool: ConnectionSource, send_after_commit: Callable[[str], None], *,
                 parallel: int = 4, max_batch: int = 500) -> None:
        self._pool = pool
        self._send = send_after_commit
        self.parallel = parallel  # statements in flight, so connections in use, at most
        self._max_batch = max_batch
        self._pending: list[tuple[str, WebhookPayload, asyncio.Future[bool]]] = []
        self._running = 0

    async def insert(self, msg_id: str, payload: WebhookPayload) -> bool:
        """True when this call stored the event, False for a known `webhook-id`."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((msg_id, payload, done))
        if self._running < self.parallel:
            self._running += 1
            asyncio.get_running_loop().create_task(self._flush())
        return await done

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:self._max_batch]
                del self._pending[:self._max_batch]
                await self._write(batch)
        finally:
            self._running -= 1

    async def _write(self, batch: list[tuple[str, WebhookPayload, asyncio.Future[bool]]]
                     ) -> None:
        # A webhook-id twice in one batch (a sender retrying fast) is one row: the first
        # request for it is the one that stored it.
        rows = {msg_id: payload for msg_id, payload, _ in reversed(batch)}
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(_INSERT_EVENTS, (
                    list(rows), [p.event_type for p in rows.values()],
                    [json.dumps(p.body) for p in rows.values()]))
                inserted = {row[0] for row in await cursor.fetchall()}
        except Exception as exc:
            if len(batch) > 1 and not isinstance(exc, psycopg.OperationalError):
                # One event Postgres refuses must not fail the others: each alone again.
                for item in batch:
                    await self._write([item])
                return
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        for msg_id, _, done in batch:
            first = msg_id in inserted
            if first:
                inserted.discard(msg_id)
                self._send(msg_id)
            if not done.done():
                done.set_result(first)


async def store_async(writer: InboxWriter, msg_id: str, payload: WebhookPayload
                      ) -> WebhookReceipt:
    """`intake.store` on an event loop: insert once (grouped with concurrent events),
    `process_webhook_event` sent after commit. Postgres down or no connection in time raise
    `psycopg.OperationalError`."""
    inserted = await writer.insert(msg_id, payload)
    return WebhookReceipt(status="accepted" if inserted else "duplicate", webhook_id=msg_id)
