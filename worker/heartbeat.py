"""Worker heartbeats: every worker process says, every few seconds, that it is alive.

Each process keeps one field of the Redis hash `workers:heartbeat` (on the broker's Redis,
the one a worker needs to work at all): `host:pid` -> JSON `{host, pid, started_at, queues,
seen_at, stopped_at?}`. `queues` (what the process consumes) also tells readers which
queues exist, so they need not SCAN a Redis that may hold millions of cache keys.
`seen_at` is Redis's own `TIME`, and readers compare it with Redis's `TIME` too, so a host
whose clock is off cannot look dead or alive by mistake. A worker that stops cleanly says
so (`stopped_at`) instead of leaving its last beat to age; one that was killed simply
stops beating. Fields older than a day are dropped when a worker boots, so the
hash stays as small as the cluster.

`keysync status` and `/metrics` read it with `read_heartbeats` (one HGETALL, one TIME).
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dramatiq
import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

log = structlog.get_logger(__name__)

HEARTBEATS = "workers:heartbeat"
HEARTBEAT_INTERVAL_S = 5.0
# A field not refreshed for this long belongs to a process that is gone for good.
_FORGET_AFTER_S = 24 * 3600

_HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "unknown"

# KEYS: hash. ARGV: field, static info (JSON), stopped (1/0). Redis' clock stamps the beat.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local info = cjson.decode(ARGV[2])
info['seen_at'] = string.format('%.3f', now)
if ARGV[3] == '1' then info['stopped_at'] = info['seen_at'] end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(info))
return 1
"""


@dataclass(frozen=True)
class WorkerBeat:
    id: str  # host:pid
    host: str
    pid: int
    started_at: str | None
    age_s: float  # since its last beat, by Redis's clock
    stopped: bool
    queues: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "pid": self.pid, "started_at": self.started_at,
                "last_beat_s": round(self.age_s, 1), "stopped": self.stopped}


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1_000_000


def announced_queues(beats: Iterable[WorkerBeat]) -> set[str]:
    """The queues any worker of the last day consumes, and `default`."""
    return {"default"}.union(*(b.queues for b in beats))


def read_heartbeats(client: redis.Redis, *, now: float | None = None) -> list[WorkerBeat]:
    """Every worker process that beat within a day, freshest first. `now` (epoch seconds)
    defaults to Redis's clock."""
    raw: dict[Any, Any] = client.hgetall(HEARTBEATS)
    current = redis_now(client) if now is None else now
    beats = []
    for field, value in raw.items():
        try:
            info = json.loads(value)
            seen = float(info["seen_at"])
        except (TypeError, ValueError, KeyError):
            continue  # not ours, or half-written by an older version: never fail a reader
        ident = field.decode() if isinstance(field, bytes) else str(field)
        beats.append(WorkerBeat(
            id=ident, host=str(info.get("host", ident.rpartition(":")[0])),
            pid=int(info.get("pid", 0)), started_at=info.get("started_at"),
            age_s=max(current - seen, 0.0), stopped="stopped_at" in info,
            queues=tuple(str(q) for q in info.get("queues") or ()),
        ))
    return sorted(beats, key=lambda b: b.age_s)


class Heartbeat:
    """The beating thread of one process: `start()` once, `stop()` on clean shutdown."""

    def __init__(self, client: redis.Redis, *, interval_s: float = HEARTBEAT_INTERVAL_S,
                 queues: Iterable[str] = ()) -> None:
        self._redis = client
        self._interval_s = interval_s
        self._pid = os.getpid()
        self.id = f"{_HOST}:{self._pid}"
        self._info = json.dumps({"host": _HOST, "pid": self._pid,
                                 "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                                 "queues": sorted(set(queues))})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self._forget_gone()
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="keysync-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._interval_s + 1)
        self.beat(stopped=True)

    def beat(self, *, stopped: bool = False) -> None:
        try:
            self._redis.eval(_BEAT, 1, HEARTBEATS, self.id, self._info, "1" if stopped else "0")
        except redis.RedisError as exc:
            # Once per outage: the broker being down is reported by everything else already.
            if not self._failing:
                log.warning("worker heartbeat failed", error=str(exc))
            self._failing = True
            return
        if self._failing:
            log.info("worker heartbeat restored")
        self._failing = False

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.beat()

    def _forget_gone(self) -> None:
        try:
            gone = [b.id for b in read_heartbeats(self._redis) if b.age_s > _FORGET_AFTER_S]
            if gone:
                self._redis.hdel(HEARTBEATS, *gone)
        except redis.RedisError:
            pass  # housekeeping only; the first beat reports the outage


class HeartbeatMiddleware(Middleware):
    """Publishes this process's heartbeat while at least one dramatiq Worker runs in it
    (tests may run several in one process; the process still beats once)."""

    def __init__(self, *, interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._workers = 0
        self._heartbeat: Heartbeat | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if not isinstance(broker, RedisBroker):
            return
        with self._lock:
            self._workers += 1
            if self._heartbeat is None:
                # dramatiq declares `q.DQ` and `q.XQ` beside each queue `q`: name `q` only.
                queues = {q for q in broker.get_declared_queues()
                          if not q.endswith((".DQ", ".XQ"))}
                self._heartbeat = Heartbeat(broker.client, interval_s=self._interval_s,
                                            queues=queues)
                self._heartbeat.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        with self._lock:
            self._workers = max(self._workers - 1, 0)
            if self._workers == 0 and self._heartbeat is not None:
                self._heartbeat.stop()
                self._heartbeat = None
