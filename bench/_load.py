"""A load client far cheaper than the server it measures.

Requests are built (and signed) before the clock starts; forked processes each drive a few
keep-alive connections over raw non-blocking sockets with one `selectors` loop, parsing
just the status line and `Content-Length`. No HTTP library, no threads, no interpreter lock
shared with anything measured: the client's own CPU per request is reported beside the
server's, so a reader can see it stays small.
"""

from __future__ import annotations

import multiprocessing as mp
import selectors
import socket
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field


def http_request(method: str, path: str, port: int, headers: dict[str, str] | None = None,
                 body: bytes = b"") -> bytes:
    """The raw HTTP/1.1 bytes of one keep-alive request."""
    lines = [f"{method} {path} HTTP/1.1", f"host: 127.0.0.1:{port}",
             f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    started: float = 0.0  # time.monotonic(): system-wide, comparable across processes
    finished: float = 0.0
    cpu_s: float = 0.0  # the client processes' own CPU while sending

    @property
    def wall_s(self) -> float:
        return self.finished - self.started

    def rate(self, status: int | None = None) -> float:
        count = sum(self.statuses.values()) if status is None else self.statuses[status]
        return count / self.wall_s


class _Conn:
    __slots__ = ("buffer", "queue", "sent_at", "sock")

    def __init__(self, port: int, queue: list[bytes]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buffer = b""
        self.sent_at = 0.0
        self.queue = queue

    def send_next(self) -> bool:
        if not self.queue:
            return False
        self.sent_at = time.monotonic()
        self.sock.sendall(self.queue.pop())  # small requests: the socket buffer takes them
        return True

    def response(self) -> int | None:
        """The status of a complete response in the buffer (consumed), else None."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.buffer[:end].lower()
        length, at = 0, head.find(b"content-length:")
        if at >= 0:
            eol = head.find(b"\r\n", at)
            length = int(head[at + 15:eol if eol >= 0 else None])
        if len(self.buffer) < end + 4 + length:
            return None
        self.buffer = self.buffer[end + 4 + length:]
        return int(head[9:12])


def _drive(port: int, requests: list[bytes], connections: int, start: mp.synchronize.Event,
           out: mp.connection.Connection) -> None:
    queues: list[list[bytes]] = [requests[i::connections][::-1] for i in range(connections)]
    conns = [_Conn(port, q) for q in queues if q]
    selector = selectors.DefaultSelector()
    for conn in conns:
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    statuses: Counter[int] = Counter()
    latencies = array("d")
    start.wait()
    cpu0, started = time.process_time(), time.monotonic()
    open_conns = sum(conn.send_next() for conn in conns)
    while open_conns:
        for key, _ in selector.select():
            conn: _Conn = key.data
            chunk = conn.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed a keep-alive connection")
            conn.buffer += chunk
            status = conn.response()
            if status is None:
                continue
            latencies.append(time.monotonic() - conn.sent_at)
            statuses[status] += 1
            if not conn.send_next():
                open_conns -= 1
    finished, cpu = time.monotonic(), time.process_time() - cpu0
    out.send((dict(statuses), latencies.tobytes(), started, finished, cpu))
    for conn in conns:
        conn.sock.close()


def run_load(port: int, requests: list[bytes], *, processes: int = 2,
             connections: int = 32) -> LoadResult:
    """Send every request once over `connections` keep-alive connections spread over
    `processes` forked clients; returns statuses, latencies, wall time and client CPU."""
    ctx = mp.get_context("fork")
    start = ctx.Event()
    per_process = max(1, connections // processes)
    workers = []
    for i in range(processes):
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_drive, args=(port, requests[i::processes], per_process,
                                                start, send), daemon=True)
        proc.start()
        workers.append((proc, receive))
    start.set()
    result = LoadResult(started=float("inf"))
    for proc, receive in workers:
        statuses, latencies, started, finished, cpu = receive.recv()
        proc.join()
        result.statuses.update(statuses)
        result.latencies_s.extend(array("d", latencies))
        result.started = min(result.started, started)
        result.finished = max(result.finished, finished)
        result.cpu_s += cpu
    return result
