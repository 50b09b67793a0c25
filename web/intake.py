"""The web process's asynchronous webhook intake (`POST /webhooks/g2a`): autocommit
connections per event loop, the inbox writer's group commit on them, and a thread that sends
`process_webhook_event` so the loop never waits on the broker.

Built by `web.deps.get_webhook_intake` (one per event loop) and closed by the webhook
router's lifespan; everything else the web process uses is `keysync.resources.Resources`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import structlog
from dramatiq.brokers.redis import RedisBroker
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from sqlalchemy.engine import make_url

from keysync.settings import Settings
from services.webhooks.inbox_writer import InboxWriter
from worker.enqueue import SWEPT_FROM_OWN_TABLE, Actor, send_many_now

log = structlog.get_logger(__name__)

class LoopPool:
    """Autocommit psycopg connections for one event loop, at most `max_size` in use.

    Opened on demand in the request's own task and kept idle afterwards: no background
    task, so nothing outlives a loop that stops (an app served without lifespan, a test
    client's per-request loop), and with Postgres down a request fails at its own connect
    attempt at once. No check per checkout (a pre-ping would double the round trips of a
    one-statement request): a connection that died with Postgres fails its statement, which
    is answered 503 (the sender retries), and is dropped here.
    """

    def __init__(self, database_url: str, *, max_size: int, name: str,
                 timeout_s: float = 3.0) -> None:
        self._conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(
            hide_password=False)
        self._name = name
        self._timeout_s = timeout_s  # as long as the sync engine's pool_timeout
        self._slots = asyncio.Semaphore(max_size)
        self._idle: list[AsyncConnection[TupleRow]] = []

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[TupleRow]]:
        if self._slots.locked():
            try:
                await asyncio.wait_for(self._slots.acquire(), self._timeout_s)
            except TimeoutError:
                raise psycopg.OperationalError(
                    f"no connection free within {self._timeout_s:g} s") from None
        else:
            await self._slots.acquire()
        try:
            conn = self._idle.pop() if self._idle else await AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=3,
                application_name=self._name)
            try:
                yield conn
            finally:
                if conn.closed or conn.broken or (
                        conn.info.transaction_status != TransactionStatus.IDLE):
                    await conn.close()
                else:
                    self._idle.append(conn)
        finally:
            self._slots.release()

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().close()


# Jobs sent in one Redis round trip at most (what queued while the last batch was in
# flight): enough to keep up with any burst, few enough that building a batch holds the
# interpreter lock, so stalls the event loop, for a few milliseconds at most.
SEND_BATCH = 100


def _send_forever(jobs: queue.Queue[str | None], broker: RedisBroker, actor: Actor) -> None:
    """Sends the queued ids until it takes the `None` that `close` queues last.

    Everything that queued meanwhile goes in one pipelined round trip: this thread shares
    the interpreter lock with a busy event loop and gets it back only every switch interval
    (5 ms) after each wait on Redis, so one round trip per job capped it at a few hundred
    jobs a second, below what the loop accepts; a burst then overflowed the backlog onto
    the sweeper.
    """
    while True:
        batch = [jobs.get()]
        while len(batch) < SEND_BATCH:
            try:
                batch.append(jobs.get_nowait())
            except queue.Empty:
                break
        ids = [arg for arg in batch if arg is not None]
        if ids:
            try:
                send_many_now(broker, actor, [(arg,) for arg in ids])
            except Exception as exc:  # the broker is down: its sweeper re-sends the rows' jobs
                log.warning("broker unavailable; jobs left for their sweeper",
                            actor=actor.value, jobs=len(ids), error=str(exc))
        if len(ids) < len(batch):  # `close` queued the None after every id it must send
            return


def _stop(jobs: queue.Queue[str | None]) -> None:
    with contextlib.suppress(queue.Full):  # a full backlog ends with its process
        jobs.put_nowait(None)


class SweptJobSender:
    """Sends one swept actor's jobs from a thread of its own, so an event loop hands over
    the id of a committed row and never waits on the broker.

    Only for actors in `SWEPT_FROM_OWN_TABLE`: a job lost here (broker down, backlog full,
    process killed) is still an unprocessed row that the actor's sweeper re-sends, exactly
    as for a job `worker.enqueue` failed to send after commit.
    """

    def __init__(self, broker: RedisBroker, actor: Actor, *, backlog: int = 10_000) -> None:
        if actor not in SWEPT_FROM_OWN_TABLE:
            raise ValueError(f"{actor} has no sweeper: send it with worker.enqueue")
        self.actor = actor
        self._jobs: queue.Queue[str | None] = queue.Queue(backlog)
        self._full = False
        thread = threading.Thread(target=_send_forever, args=(self._jobs, broker, actor),
                                  name=f"send-{actor.value}", daemon=True)
        thread.start()
        self._thread = thread
        # An owner that never calls close() (an app served without lifespan) still ends it.
        weakref.finalize(self, _stop, self._jobs)

    def send(self, arg: str) -> None:
        try:
            self._jobs.put_nowait(arg)
            self._full = False
        except queue.Full:
            if not self._full:  # one line per overflow, not one per dropped job
                log.warning("job backlog full; jobs left for their sweeper", actor=self.actor.value)
            self._full = True

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (within `timeout_s`), then stop the thread."""
        try:
            self._jobs.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)


# Enough to overlap a batch's round trip with the next batches' parsing; more would only
# make smaller batches.
INSERTS_IN_FLIGHT = 4


class WebhookIntake:
    """What `POST /webhooks/g2a` needs on the event loop: the decoded secrets, the inbox
    writer (group commit) on a pool sized to the statements it runs at once, and a sender
    for `process_webhook_event`.

    Asyncio and psycopg's async objects belong to one loop: the web app makes one on the
    first webhook in each loop (`web.deps`) and the webhook router's lifespan closes it.
    """

    def __init__(self, settings: Settings, broker: RedisBroker, *,
                 name: str = "keysync-web-intake") -> None:
        settings.require("database_url")
        self.loop = asyncio.get_running_loop()
        # Decoded once: every request verifies against all of them.
        self.secrets = settings.webhook_secret_list
        self.sender = SweptJobSender(broker, Actor.PROCESS_WEBHOOK_EVENT)
        # The pool is sized to what it serves: the writer's statements in flight.
        self.pool = LoopPool(settings.database_url, max_size=INSERTS_IN_FLIGHT, name=name)
        self.writer = InboxWriter(self.pool, self.sender.send, parallel=INSERTS_IN_FLIGHT)

    async def close(self) -> None:
        await self.pool.close()
        await asyncio.to_thread(self.sender.close)
