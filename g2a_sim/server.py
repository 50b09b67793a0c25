"""Running the simulator: `run()` for `keysync g2a-sim`, `SimServer` for tests/benchmarks."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace
from types import TracebackType
from typing import Any

import uvicorn

from g2a_sim.app import (
    DEFAULT_API_HASH,
    DEFAULT_API_SECRET,
    DEFAULT_EMAIL,
    SimConfig,
    create_app,
)
from g2a_sim.state import SimState


def run(
    host: str = "127.0.0.1",
    port: int = 8765,
    products: int = 1000,
    seed: int = 42,
    rate_limit_per_min: int = 600,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    email: str = DEFAULT_EMAIL,
    api_hash: str = DEFAULT_API_HASH,
    api_secret: str = DEFAULT_API_SECRET,
) -> None:
    """Serve in the foreground until interrupted (uvicorn handles SIGINT/SIGTERM)."""
    config = SimConfig(
        products=products,
        seed=seed,
        rate_limit_per_min=rate_limit_per_min,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        email=email,
        api_hash=api_hash,
        api_secret=api_secret,
    )
    # log_config=None: uvicorn's lines go through the logging of whoever runs us (keysync's
    # CLI configures it) instead of handlers and a format of uvicorn's own.
    uvicorn.run(create_app(config), host=host, port=port, log_level="info", log_config=None,
                access_log=False)


class SimServer:
    """The simulator on 127.0.0.1 and a free port, served from a background thread.

        with SimServer(SimConfig(products=200)) as sim:
            httpx.get(sim.url + "/_sim/stats")
    """

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config or SimConfig(), **overrides)
        self.app = create_app(self.config)
        # Bind before starting so `.url` is known and no other process can take the port.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this; without it Nagle plus delayed ACKs add ~40 ms
        # to every keep-alive request on a socket handed to uvicorn.
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on",
                           log_config=None)
        )
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> SimState:
        """Direct access to the simulator's state, for assertions."""
        state: SimState = self.app.state.sim
        return state

    def start(self) -> SimServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True,
            name=f"g2a-sim-{self.port}",
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("G2A simulator failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._thread = None
        self._sock.close()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
