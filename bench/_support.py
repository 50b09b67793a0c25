"""Shared benchmark plumbing: servers (embedded unless URLs are given) and table printing."""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from keysync.embedded import EmbeddedPostgres, EmbeddedRedis
from keysync.logging import configure_logging
from keysync.settings import SECRET_HINTS, generate_secret

# Benchmarks print tables; per-operation info logs would drown them (and cost time).
configure_logging("console", os.environ.get("LOG_LEVEL", "WARNING"))

# There are no public default secrets (CONTRACT §3): like the test suite, a benchmark run
# makes its own, inherited by the `keysync serve` it spawns.
for _name in SECRET_HINTS:
    if not os.environ.get(_name.upper(), "").strip():
        os.environ[_name.upper()] = generate_secret(_name)


@contextmanager
def redis_server() -> Iterator[str]:
    """REDIS_URL when set, else a throwaway embedded Redis."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with tempfile.TemporaryDirectory(prefix="keysync-bench-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis").start()
        try:
            yield server.url
        finally:
            server.stop()


@contextmanager
def postgres_server() -> Iterator[str]:
    """DATABASE_URL when set, else a throwaway embedded PostgreSQL (migrated to head)."""
    from db.migrate import upgrade

    if os.environ.get("DATABASE_URL"):
        upgrade(os.environ["DATABASE_URL"])
        yield os.environ["DATABASE_URL"]
        return
    with tempfile.TemporaryDirectory(prefix="keysync-bench-") as tmp:
        os.chmod(tmp, 0o755)
        server = EmbeddedPostgres(Path(tmp) / "pg").start()
        try:
            upgrade(server.url)
            yield server.url
        finally:
            server.stop()


@contextmanager
def servers_in_env() -> Iterator[tuple[str, str]]:
    """Postgres and Redis (as `postgres_server`/`redis_server` choose them), exported as
    DATABASE_URL, REDIS_URL and BROKER_URL for the `keysync` processes a benchmark spawns;
    yields (database_url, redis_url)."""
    with redis_server() as redis_url, postgres_server() as database_url:
        os.environ.update(DATABASE_URL=database_url, REDIS_URL=redis_url, BROKER_URL=redis_url,
                          LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"))
        yield database_url, redis_url


def percentiles(samples_s: Sequence[float]) -> tuple[float, float, float]:
    """p50, p95, p99 in milliseconds."""
    ordered = sorted(samples_s)
    if len(ordered) == 1:
        value = ordered[0] * 1000
        return value, value, value
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[94] * 1000, cuts[98] * 1000


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column != columns[0] else "left")
    for row in rows:
        table.add_row(*(f"{v:,.3f}" if isinstance(v, float) else str(v) for v in row))
    Console(width=120).print(table)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and every live descendant (a dramatiq supervisor and its
    worker processes, a postmaster and its backends), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        try:
            # Fields after the parenthesised command name: utime, stime, then cutime and
            # cstime (children already exited and reaped, e.g. Postgres backends).
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            total += sum(int(v) for v in fields[11:15]) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited between the listing and the read
    return total


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    """Until `url` answers 200 (a server process finished booting)."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.1)
