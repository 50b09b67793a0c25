"""Cache invalidation cost with 1,000,000 unrelated keys in Redis.

Compares, in one run:
- single-key invalidation (`Cache.invalidate`: UNLINK + generation bump, one Lua call);
- removing a 100-key family: our tag-set method (`invalidate_pattern("catalog:*")`), the
  SCAN + UNLINK fallback (used for ad-hoc patterns), and the `KEYS` + `DEL` baseline;
- one cached read while Redis is down (breaker open) vs a healthy cache hit.

Usage: python bench/invalidation.py [--keys 1000000] [--runs 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from bench._support import percentiles, print_table, redis_server
from keysync.embedded import free_port
from services.cache import Cache, make_cache_redis


def fill_unrelated(client: redis.Redis, count: int) -> None:
    batch = 10_000
    for start in range(0, count, batch):
        pipe = client.pipeline(transaction=False)
        pipe.mset({f"unrelated:{i}": "x" for i in range(start, min(start + batch, count))})
        pipe.execute()


def timed(fn, runs: int, setup=None) -> list[float]:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(runs):
        if setup is not None:
            setup()
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--slow-runs", type=int, default=10, help="runs of the O(keyspace) methods")
    args = parser.parse_args()

    with redis_server() as url:
        client = redis.Redis.from_url(url)
        client.flushdb()
        started = time.perf_counter()
        fill_unrelated(client, args.keys)
        print(f"filled {client.dbsize():,} unrelated keys in {time.perf_counter() - started:.1f}s")
        cache = Cache(make_cache_redis(url, timeout_s=5.0), None)

        def seed_family(prefix: str) -> None:
            for i in range(100):
                cache.set(f"{prefix}{i}", {"i": i}, 600)

        def seed_plain(prefix: str) -> None:
            client.mset({f"{prefix}{i}": "v" for i in range(100)})

        def keys_del() -> None:
            found = client.keys("promo:*")
            if found:
                client.delete(*found)

        single = timed(
            lambda: cache.invalidate(["game:42"]),
            args.runs,
            setup=lambda: client.set("game:42", "v"),
        )
        family = timed(
            lambda: cache.invalidate_pattern("catalog:*"),
            args.runs,
            setup=lambda: seed_family("catalog:"),
        )
        scan = timed(
            lambda: cache.invalidate_pattern("promo:*"),
            args.slow_runs,
            setup=lambda: seed_plain("promo:"),
        )
        keys = timed(keys_del, args.slow_runs, setup=lambda: seed_plain("promo:"))

        cache.set("game:hot", {"price": "1.00"}, 600)
        hit = timed(
            lambda: cache.read_through("game:hot", 600, lambda: {"price": "1.00"}), args.runs
        )
        dead = Cache(
            make_cache_redis(f"redis://127.0.0.1:{free_port()}/0"), None, reset_timeout_s=3600
        )
        for _ in range(5):  # trip the breaker
            dead.read_through("game:hot", 600, lambda: {"price": "1.00"})
        degraded = timed(
            lambda: dead.read_through("game:hot", 600, lambda: {"price": "1.00"}), args.runs
        )

        baseline = percentiles(keys)
        rows = []
        for name, samples in (
            ("KEYS + DEL, 100 keys (baseline)", keys),
            ("SCAN + UNLINK, 100 keys (fallback)", scan),
            ("tag set + Lua UNLINK, 100 keys (ours)", family),
            ("single key UNLINK + gen bump (ours)", single),
        ):
            p50, p95, p99 = percentiles(samples)
            rows.append((name, len(samples), p50, p95, p99, f"{baseline[1] / p95:,.1f}x"))
        print_table(
            f"Invalidation with {args.keys:,} unrelated keys (ms; speed-up vs KEYS at p95)",
            ["method", "runs", "p50", "p95", "p99", "vs KEYS"],
            rows,
        )

        hit_p = percentiles(hit)
        deg_p = percentiles(degraded)
        print_table(
            "One cached read (ms)",
            ["path", "runs", "p50", "p95", "p99", "vs hit"],
            [
                ("healthy Redis, cache hit", len(hit), *hit_p, "1.0x"),
                (
                    "Redis down, breaker open (loader only)",
                    len(degraded),
                    *deg_p,
                    f"{deg_p[0] / hit_p[0]:,.2f}x",
                ),
            ],
        )
        client.flushdb()


if __name__ == "__main__":
    main()
