"""The no-op reference actor for `bench/webhooks.py`, run by `dramatiq bench._noop_actor`.

On the same Redis as the product's broker (BROKER_URL), with dramatiq's default middleware
and its own queue, so `keysync worker` never sees its messages. Its only work is counting
itself, which is how the benchmark knows the queue has drained.
"""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

QUEUE = "bench_noop"
DONE_KEY = "bench:noop:done"

broker = RedisBroker(url=os.environ["BROKER_URL"])  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)
_counter = redis.Redis.from_url(os.environ["BROKER_URL"])


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def bench_noop(n: int) -> None:
    _counter.incr(DONE_KEY)
