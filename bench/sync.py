"""Catalog sync throughput and the wall time of a rate-limited full sync.

In one run, against a fresh database and the G2A simulator over HTTP:
1. unthrottled sim, N products: our full sync (batch upsert, 8 fetch threads; and with 1
   thread, to separate the listing from the writing), then its no-op re-run, against a
   per-row ORM baseline (sequential pages, one SELECT then INSERT/UPDATE per product);
2. the write path alone, 10,000 rows in batches of 1,000: ours (COPY into a temp table +
   one merge) vs the `unnest` upsert it replaced vs psycopg `executemany` of the same
   single-row upsert vs a bare COPY + upsert reference;
3. what confirming absent products costs (CONTRACT §6: every active game missing from a
   full listing is looked up by id before it is deactivated), unthrottled, N products:
   a full re-sync with nothing removed, with 1 % removed, and with a mid-listing drift,
   against the same run's listing requests (the baseline: what a full sync cost before);
4. unless --quick: with the sim and our limiter at 600 requests/min, 10,000 products: the
   first full sync, a full re-sync with nothing removed (must stay within 1.1x of the
   500-page floor of 50 s), one with 1 % removed, and a stock check.

Postgres/Redis: DATABASE_URL/REDIS_URL when set, else throwaway embedded servers.
Usage: python bench/sync.py [--products 10000] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import redis
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from bench._support import postgres_server, print_table, redis_server
from db.models import Game
from db.session import make_engine, make_session_factory
from g2a_sim import SimServer
from keysync.logging import configure_logging
from services.cache import Cache, CacheOutbox, make_cache_redis
from services.catalog import (
    SyncDeps,
    SyncResult,
    round_half_up,
    run_catalog_sync,
    run_stock_check,
    shop_price,
    shop_slug,
)
from services.catalog import writer as catalog_writer
from services.g2a import G2AClient, RateLimiter

MARKUP = Decimal("2")


def client_for(sim: SimServer, redis_client: redis.Redis, rate_per_min: int) -> G2AClient:
    http = httpx.Client(base_url=sim.url, timeout=10.0,
                        limits=httpx.Limits(max_connections=20))
    return G2AClient(http, email=sim.config.email, api_hash=sim.config.api_hash,
                     api_secret=sim.config.api_secret,
                     rate_limiter=RateLimiter(redis_client, rate_per_min))


def reset(sessions: sessionmaker[Session], redis_client: redis.Redis) -> None:
    with sessions() as s, s.begin():
        s.execute(text("TRUNCATE games, sync_runs, lock_fences, cache_invalidations CASCADE"))
    redis_client.flushdb()


def orm_baseline(sessions: sessionmaker[Session], client: G2AClient) -> int:
    """The naive sync: pages one after another, one SELECT and one INSERT/UPDATE per product.
    (Listing capped at 10,000 like any unpartitioned listing; fine for the sizes benched.)"""
    page, pages, written = 1, 1, 0
    while page <= pages:
        listing = client.list_products(page=page, include_out_of_stock=True)
        pages = min(500, -(-listing.total // 20))
        with sessions() as s, s.begin():
            for p in listing.products:
                if p.g2a_price is None:
                    continue
                game = s.execute(
                    select(Game).where(Game.g2a_product_id == p.id)
                ).scalar_one_or_none()
                values = dict(
                    slug=shop_slug(p.slug, p.id), name=p.name, g2a_price=p.g2a_price,
                    price=shop_price(p.g2a_price, MARKUP), g2a_qty=p.qty, in_stock=p.qty > 0,
                    is_active=True, platform=p.platform, region=p.region,
                    image_url=p.image_url, g2a_updated_at=p.updated_at,
                )
                if game is None:
                    s.add(Game(g2a_product_id=p.id, synced_at=datetime.now(UTC), **values))
                    written += 1
                elif any(getattr(game, k) != v for k, v in values.items()):
                    for k, v in values.items():
                        setattr(game, k, v)
                    written += 1
                s.flush()
        page += 1
    return written


Row = tuple[Any, ...]

_TAIL = (
    "ON CONFLICT (g2a_product_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in catalog_writer.COMPARED.split(", "))
    + ", synced_at = now(), updated_at = now() WHERE ("
    + ", ".join(f"g.{c}" for c in catalog_writer.COMPARED.split(", "))
    + ") IS DISTINCT FROM ("
    + ", ".join(f"excluded.{c}" for c in catalog_writer.COMPARED.split(", "))
    + ") RETURNING g.id, (xmax = 0)"
)
_COLS = ("id, g2a_product_id, slug, name, price, g2a_price, g2a_qty, in_stock, is_active, "
         "platform, region, image_url, g2a_updated_at, synced_at, updated_at")


def fetch_rows(client: G2AClient, n: int) -> list[Row]:
    rows: list[Row] = []
    for page in range(1, min(500, -(-n // 20)) + 1):
        for p in client.list_products(page=page, include_out_of_stock=True).products:
            if p.g2a_price is None:
                continue
            g2a = round_half_up(p.g2a_price)
            rows.append((p.id, shop_slug(p.slug, p.id), p.name, shop_price(g2a, MARKUP), g2a,
                         p.qty, p.platform, p.region, p.image_url, p.updated_at))
    return rows


# The write path before issue 13: one INSERT ... SELECT FROM unnest(arrays) per batch.
_UNNEST_UPSERT = text(
    f"INSERT INTO games AS g ({_COLS}) SELECT gen_random_uuid(), v.pid, v.slug, v.name, "
    "v.price, v.g2a_price, v.qty, v.qty > 0, true, v.platform, v.region, v.image_url, "
    "v.g2a_updated_at, now(), now() FROM unnest(CAST(:pid AS text[]), CAST(:slug AS text[]), "
    "CAST(:name AS text[]), CAST(:price AS numeric[]), CAST(:g2a_price AS numeric[]), "
    "CAST(:qty AS int[]), CAST(:platform AS text[]), CAST(:region AS text[]), "
    "CAST(:image_url AS text[]), CAST(:g2a_updated_at AS timestamptz[])) AS v(pid, slug, "
    f"name, price, g2a_price, qty, platform, region, image_url, g2a_updated_at) {_TAIL}"
)


def write_ours(sessions: sessionmaker[Session], batch: list[Row]) -> int:
    """The product's write path (`services.catalog.writer.upsert_products`)."""
    with sessions() as s, s.begin():
        return len(catalog_writer.upsert_products(s, batch))


def write_unnest(sessions: sessionmaker[Session], batch: list[Row]) -> int:
    cols = list(zip(*batch, strict=True))
    names = ("pid", "slug", "name", "price", "g2a_price", "qty", "platform", "region",
             "image_url", "g2a_updated_at")
    with sessions() as s, s.begin():
        return len(s.execute(_UNNEST_UPSERT,
                             {k: list(v) for k, v in zip(names, cols, strict=True)}).all())


def write_executemany(sessions: sessionmaker[Session], batch: list[Row]) -> int:
    sql = (f"INSERT INTO games AS g ({_COLS}) VALUES (gen_random_uuid(), %s, %s, %s, %s, %s, "
           f"%s, %s, true, %s, %s, %s, %s, now(), now()) {_TAIL}")
    params = [(*r[:6], r[5] > 0, *r[6:]) for r in batch]
    with sessions() as s, s.begin():
        cur = s.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
        cur.executemany(sql, params, returning=True)
        written = 0
        while True:
            written += len(cur.fetchall())
            if not cur.nextset():
                return written


def write_copy(sessions: sessionmaker[Session], batch: list[Row]) -> int:
    with sessions() as s, s.begin():
        cur = s.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS sync_in (pid text, slug text, name text, "
                    "price numeric, g2a_price numeric, qty int, platform text, region text, "
                    "image_url text, g2a_updated_at timestamptz) ON COMMIT DELETE ROWS")
        with cur.copy("COPY sync_in FROM STDIN") as copy:
            for row in batch:
                copy.write_row(row)
        cur.execute(f"INSERT INTO games AS g ({_COLS}) SELECT gen_random_uuid(), pid, slug, name, "
                    f"price, g2a_price, qty, qty > 0, true, platform, region, image_url, "
                    f"g2a_updated_at, now(), now() FROM sync_in {_TAIL}")
        return len(cur.fetchall())


def write_path(sessions: sessionmaker[Session], redis_client: redis.Redis,
               rows: list[Row], rounds: int = 3) -> list[list[object]]:
    """Each method's best of `rounds`, the methods interleaved within each round so that a
    busy moment of the machine does not land on one method only."""
    methods = (("ours: COPY + merge (writer.upsert_products)", write_ours),
               ("unnest upsert (before)", write_unnest),
               ("executemany upsert", write_executemany),
               ("COPY temp + upsert (reference)", write_copy))
    best: dict[str, list[float]] = {label: [0.0, 0.0] for label, _ in methods}
    for _ in range(rounds):
        for label, fn in methods:
            reset(sessions, redis_client)
            for run in range(2):  # first run inserts everything, the second writes nothing
                started = time.perf_counter()
                written = sum(fn(sessions, rows[i:i + 1000]) for i in range(0, len(rows), 1000))
                rate = len(rows) / (time.perf_counter() - started)
                assert written == (len(rows) if run == 0 else 0), (label, run, written)
                best[label][run] = max(best[label][run], rate)
    reference = best[methods[-1][0]]
    return [[label, len(rows), insert, noop, insert / reference[0], noop / reference[1]]
            for label, (insert, noop) in best.items()]


def removal_scenarios(sim: SimServer, run: Callable[[], SyncResult],
                      n: int) -> list[tuple[str, SyncResult, int]]:
    """Full re-syncs of an already synced catalog: (label, result, look-ups the sim saw)."""

    def lookups() -> int:
        return int(httpx.get(sim.url + "/_sim/stats").json()["lookups"])

    out: list[tuple[str, SyncResult, int]] = []
    for label, prepare in (
        ("nothing removed", lambda: None),
        (f"1 % removed ({n // 100:,})",
         lambda: httpx.post(sim.url + "/_sim/mutate", json={"removed": n // 100})),
        ("drift after 50 listing requests",
         lambda: httpx.post(sim.url + "/_sim/drift", json={"after": 50})),
    ):
        prepare()
        before = lookups()
        result = run()
        out.append((label, result, lookups() - before))
    return out


def removal_rows(scenarios: list[tuple[str, SyncResult, int]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for label, r, looked_up in scenarios:
        listing = r.requests - looked_up
        rows.append([label, r.status, listing, looked_up, r.requests,
                     f"{r.requests / listing:.3f}x", r.removed, r.still_listed, r.duration_s])
    return rows


REMOVAL_COLUMNS = ["full re-sync", "status", "listing requests (baseline)", "look-ups",
                   "total requests", "vs listing", "removed", "kept after look-up", "wall s"]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="skip the 600 req/min runs")
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    n = args.products

    with postgres_server() as database_url, redis_server() as redis_url:
        engine = make_engine(database_url, pool_size=4, application_name="bench-sync")
        sessions = make_session_factory(engine)
        redis_client = redis.Redis.from_url(redis_url)
        cache = Cache(make_cache_redis(redis_url), CacheOutbox(sessions))

        def deps(client: G2AClient, **kw: Any) -> SyncDeps:
            base = SyncDeps(sessions=sessions, redis=redis_client, cache=cache, client=client,
                            markup_percent=MARKUP)
            return dataclasses.replace(base, **kw)

        rows: list[list[object]] = []
        with SimServer(products=n, seed=1, rate_limit_per_min=0) as sim:
            fast = client_for(sim, redis_client, 6_000_000)
            results: dict[str, float] = {}
            for label, concurrency in (("keysync sync, 8 threads", 8),
                                       ("keysync sync, 1 thread", 1)):
                reset(sessions, redis_client)
                first, t1 = timed(lambda c=concurrency: run_catalog_sync(
                    deps(fast, concurrency=c), full=True))
                again, t2 = timed(lambda c=concurrency: run_catalog_sync(
                    deps(fast, concurrency=c), full=True))
                assert first.added == n and again.unchanged == n and again.updated == 0
                results[label] = n / t1
                rows.append([label, n, t1, n / t1, n / t2, first.requests])
            reset(sessions, redis_client)
            written, t1 = timed(lambda: orm_baseline(sessions, fast))
            _, t2 = timed(lambda: orm_baseline(sessions, fast))
            assert written == min(n, 10_000)
            base_rate = written / t1
            rows.append(["per-row ORM baseline", written, t1, base_rate, written / t2, "-"])
            write_rows = write_path(sessions, redis_client, fetch_rows(fast, n))
            reset(sessions, redis_client)
            run_catalog_sync(deps(fast), full=True)
            removal = removal_rows(removal_scenarios(
                sim, lambda: run_catalog_sync(deps(fast), full=True), n))
        table = [[*r[:5], f"{float(r[3]) / base_rate:.1f}x", r[5]] for r in rows]
        print_table(
            f"Full sync of {n:,} products, unthrottled simulator",
            ["method", "products", "first run s", "products/s", "no-op re-run products/s",
             "vs ORM (first run)", "requests"],
            table,
        )

        print_table(
            "Write path only, batches of 1,000 (rows/s, best of 3 interleaved rounds)",
            ["method", "rows", "insert rows/s", "no-op re-run rows/s", "insert vs COPY ref",
             "no-op vs COPY ref"],
            write_rows,
        )

        print_table(
            f"Confirming absent products, {n:,} products already synced, unthrottled "
            f"(8 fetch threads)",
            REMOVAL_COLUMNS,
            removal,
        )

        if not args.quick:
            limited_rows: list[list[object]] = []
            with SimServer(products=10_000, seed=2, rate_limit_per_min=600) as sim:
                slow = client_for(sim, redis_client, 600)
                reset(sessions, redis_client)
                full: SyncResult = run_catalog_sync(deps(slow), full=True)
                resync: SyncResult = run_catalog_sync(deps(slow), full=True)
                httpx.post(sim.url + "/_sim/mutate", json={"removed": 100})
                removed: SyncResult = run_catalog_sync(deps(slow), full=True)
                stock: SyncResult = run_stock_check(deps(slow))
                stats = httpx.get(sim.url + "/_sim/stats").json()
            for label, r in (("first full sync", full),
                             ("full re-sync, nothing removed", resync),
                             ("full re-sync, 1 % removed (100)", removed),
                             ("stock check", stock)):
                limited_rows.append([f"{label} ({r.status})", r.pages, r.requests,
                                     r.removed, r.duration_s, f"{r.duration_s / 50.0:.3f}x"])
            print_table(
                f"10,000 products at 600 req/min (floor 50 s); sim answered "
                f"{stats['rate_limited']} requests with 429",
                ["run", "pages", "requests", "removed", "wall s", "vs 50 s floor"],
                limited_rows,
            )
        engine.dispose()


if __name__ == "__main__":
    main()
