"""Cost of one shared-state read (`keysync status`, and a `/metrics` scrape at most once per
10 s) with 1,000,000 unrelated keys in the Redis that cache and broker share.

Compares queue discovery from worker heartbeats (what the snapshot does) with discovery by
SCAN (`BrokerInspector.queues()`, the broker's key layout walked), in one run.

Usage: python bench/state_scrape.py [--keys 1000000] [--runs 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from bench._support import percentiles, postgres_server, print_table, redis_server
from bench.invalidation import fill_unrelated, timed
from db.session import make_engine, make_session_factory
from services.ops.checks import evaluate
from services.ops.snapshot import Sources, gather
from worker.heartbeat import Heartbeat
from worker.inspect import BrokerInspector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with postgres_server() as database_url, redis_server() as redis_url:
        client = redis.Redis.from_url(redis_url)
        engine = make_engine(database_url, pool_size=2)
        sources = Sources(engine, make_session_factory(engine), client, client)
        Heartbeat(client, queues=["default"]).beat()  # one worker announcing its queue
        fill_unrelated(client, args.keys)
        inspector = BrokerInspector(client)

        def snapshot() -> None:
            evaluate(gather(sources))

        rows = []
        for name, fn, runs in (
            ("snapshot + checks (queues from heartbeats)", snapshot, args.runs),
            ("queue discovery by SCAN alone (baseline)", inspector.queues, max(args.runs // 4, 3)),
        ):
            started = time.perf_counter()
            p50, p95, _ = percentiles(timed(fn, runs))
            rows.append((name, runs, p50, p95, time.perf_counter() - started))
        print_table(f"shared-state read, {args.keys:,} unrelated Redis keys",
                    ["what", "runs", "p50 ms", "p95 ms", "total s"], rows)
        engine.dispose()
        client.close()


if __name__ == "__main__":
    main()
