"""A no-op actor on the `jobs` broker, for benchmark baselines: `dramatiq jobs bench._noop_jobs`
runs it in the same worker (same processes, threads and middleware) as the real actors."""

from __future__ import annotations

import dramatiq

from jobs import broker

NOOP_QUEUE = "bench_noop"


@dramatiq.actor(broker=broker, queue_name=NOOP_QUEUE, max_retries=0)
def bench_noop() -> None:
    """Does nothing: what remains is the broker and the worker's own cost per message."""
