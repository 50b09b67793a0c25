"""Issue 16's reproduction: logins exhausted the web process. 120 logins at concurrency 60
took `keysync serve` from 110 MiB to 2,341 MiB RSS (one 64 MiB argon2 hash per request
thread at once), logins up to 13.8 s and `/healthz` 2.5-6 s.

Against a real `keysync serve` process: its peak RSS (the kernel's VmHWM) and `/healthz`
latency while 60 clients log in at once, recorded as figures; and the rate limits holding
under concurrency (one Lua call per attempt, so no two racing attempts both pass).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from keysync.embedded import free_port
from services.accounts import auth
from tests.faults.support import KEYSYNC, Figures, Proc, processes
from tests.helpers import wait_until

MIB = 1024 * 1024
RSS_BOUND_MIB = 600
HEALTHZ_P95_BOUND_S = 1.0


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _mib(pid: int, field: str) -> float:
    return round(_status_kib(pid, field) * 1024 / MIB, 1)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[str, Proc]]:
    """`keysync serve` with the sign-in limits off, so every login reaches the hashing."""
    port = free_port()
    env = {"LOGIN_RATE_PER_MIN": "0", "LOGIN_RATE_PER_ADDRESS_PER_MIN": "0"}
    with processes() as procs:
        proc = Proc([KEYSYNC, "serve", "--port", str(port)], env, tmp_path / "serve.log")
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.popen.poll() is None, proc.output()
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 60, "keysync serve up")
        yield url, proc


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_sixty_concurrent_logins_keep_memory_and_healthz_bounded(
    serve: tuple[str, Proc], sessions: Any, figures: Figures,
) -> None:
    url, proc = serve
    for n in range(3):
        auth.create_user(sessions, email=f"user{n}@example.com", password="password1")
    # A third each: right password, wrong password, no such account.
    attempts = [
        (f"user{n % 3}@example.com", "password1") if n % 3 == 0
        else (f"user{n % 3}@example.com", "wrong-password") if n % 3 == 1
        else (f"nobody{n}@example.com", "password1")
        for n in range(120)
    ]
    rss_before = _mib(proc.pid, "VmRSS")
    done = threading.Event()
    healthz: list[float] = []
    healthz_failures: list[str] = []

    def probe_healthz() -> None:
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get(url + "/healthz").status_code == 200
                except httpx.HTTPError as exc:
                    healthz_failures.append(type(exc).__name__)
                    continue
                healthz.append(time.perf_counter() - started)
                if not ok:
                    healthz_failures.append("status")
                done.wait(0.05)  # a probe every ~50 ms, like a busy load balancer

    results: list[tuple[int, float, str | None]] = []
    limits = httpx.Limits(max_connections=60, max_keepalive_connections=60)
    with httpx.Client(timeout=60, limits=limits) as client:

        def login(attempt: tuple[str, str]) -> tuple[int, float, str | None]:
            started = time.perf_counter()
            response = client.post(url + "/auth/login",
                                   json={"email": attempt[0], "password": attempt[1]})
            return (response.status_code, time.perf_counter() - started,
                    response.headers.get("Retry-After"))

        prober = threading.Thread(target=probe_healthz)
        prober.start()
        try:
            with ThreadPoolExecutor(60) as pool:
                results = list(pool.map(login, attempts))
        finally:
            done.set()
            prober.join(60)

    assert proc.popen.poll() is None, proc.output()
    rss_peak, rss_after = _mib(proc.pid, "VmHWM"), _mib(proc.pid, "VmRSS")
    statuses = Counter(status for status, _, _ in results)
    latencies = [elapsed for _, elapsed, _ in results]
    figures.requests += len(results) + len(healthz)
    figures.notes.update({
        "statuses": dict(sorted(statuses.items())),
        "rss_before_mib": rss_before, "rss_peak_mib": rss_peak, "rss_after_mib": rss_after,
        "login_p50_s": round(statistics.median(latencies), 2),
        "login_max_s": round(max(latencies), 2),
        "healthz_n": len(healthz),
        "healthz_p50_ms": round(statistics.median(healthz) * 1000, 1),
        "healthz_p95_ms": round(_percentile(healthz, 0.95) * 1000, 1),
        "healthz_max_ms": round(max(healthz) * 1000, 1),
    })
    # Every answer is a decision: signed in, refused, or "busy, retry" (never a 500 or a
    # reset connection), and a busy answer says when to come back.
    assert set(statuses) <= {200, 401, 503}, statuses
    assert statuses[200] + statuses[401] > 0  # hashing really happened
    assert all(retry for status, _, retry in results if status == 503)
    # Before: 2,341 MiB. Now at most one 64 MiB hash per core at once.
    assert rss_peak < RSS_BOUND_MIB, figures.notes
    # Before: 2.5-6 s. Logins never hold every thread of the server's pool.
    assert not healthz_failures, healthz_failures
    assert _percentile(healthz, 0.95) < HEALTHZ_P95_BOUND_S, figures.notes


def test_concurrent_attempts_never_pass_the_limits_together(resources: Any,
                                                            figures: Figures) -> None:
    """60 clients at once at one email: exactly LOGIN_RATE_PER_MIN get an answer about the
    password, every other one 429 (the limit's check-and-count is one atomic step)."""
    from tests.helpers import LiveServer
    from web.app import create_app

    auth.create_user(resources.sessions, email="ana@example.com", password="password1")
    limit = resources.settings.login_rate_per_min
    with LiveServer(create_app(resources)) as server, httpx.Client(
            timeout=60, limits=httpx.Limits(max_connections=60)) as client:

        def login(_: int) -> int:
            return client.post(server.url + "/auth/login", json={
                "email": "ana@example.com", "password": "wrong-password"}).status_code

        with ThreadPoolExecutor(60) as pool:
            statuses = Counter(pool.map(login, range(60)))
    figures.requests += 60
    figures.notes["statuses"] = dict(sorted(statuses.items()))
    # 401, or 503 when no hashing slot freed up in time; either way the limit counted it.
    assert statuses[429] == 60 - limit, statuses
    assert statuses[401] + statuses[503] == limit, statuses
