"""Helpers every test package shares: waiting on a condition, the app on a real port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn


def wait_until(predicate: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition",
               interval_s: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy and return its value; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s}s")
        time.sleep(interval_s)


def lock_waiters(engine: Any, wait_event: str) -> int:
    """How many backends of this database are blocked on a heavyweight lock of the given kind
    (`transactionid`, `advisory`, `relation`, ...): proof that a thread is waiting on a lock,
    not merely slow."""
    with engine.connect() as conn:
        return int(conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND wait_event = %(event)s",
            {"event": wait_event}).scalar_one())


def stop_worker(broker: Any, worker: Any) -> None:
    """Stop an in-process dramatiq Worker and detach it from the broker. dramatiq 2.2's
    `Worker.stop` leaves the worker's own middleware on the broker, where it starts a consumer
    for every queue declared later (importing `jobs` declares `default`); that consumer of a
    stopped worker prefetches messages no thread will ever process."""
    worker.stop()
    broker.middleware[:] = [
        m for m in broker.middleware if getattr(m, "worker", None) is not worker]


class LiveServer:
    """The app on a real port (uvicorn in a thread), so concurrent requests really are."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off",
            # Longer than any pause in a test: uvicorn closing an idle keep-alive
            # connection just as the client reuses it reads as "Server disconnected".
            timeout_keep_alive=120))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 10, "live server")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
