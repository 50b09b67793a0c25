"""`keysync up` end to end, as a user runs it: a fresh data dir, no URLs configured.

One scenario, two runs on the same KEYSYNC_DATA_DIR: the first is killed with SIGKILL
(its children and servers are left behind, as after a crash); the second must clean up
after it, come up, sync the simulator's catalog, and on SIGTERM leave nothing running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from keysync.embedded import free_port

pytestmark = pytest.mark.slow

UNSET = (
    "DATABASE_URL",
    "REDIS_URL",
    "BROKER_URL",
    "G2A_API_URL",
    "G2A_EMAIL",
    "G2A_API_HASH",
    "G2A_API_SECRET",
    "WEBHOOK_SECRETS",
    "PROMETHEUS_MULTIPROC_DIR",
)


class Up:
    def __init__(self, data_dir: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if k not in UNSET}
        env.update(KEYSYNC_DATA_DIR=str(data_dir), LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
        self.port = port
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from keysync.cli import main; main(prog_name='keysync')",
                "up",
                "--port",
                str(port),
                "--sim-products",
                "100",
            ],
            cwd=data_dir.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def output(self) -> str:
        return "\n".join(self.lines[-80:])

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"keysync up exited:\n{self.output()}"
            # Only once this run says so: a crashed run's leftover web may still answer.
            if any("keysync is up" in line for line in self.lines):
                with contextlib.suppress(httpx.HTTPError):
                    url = f"http://127.0.0.1:{self.port}/readyz"
                    if httpx.get(url, timeout=2).status_code == 200:
                        return
            time.sleep(0.3)
        raise AssertionError(f"/readyz never answered 200:\n{self.output()}")

    def printed(self, label: str) -> str:
        for line in self.lines:
            text = line.split("|", 1)[-1].strip()
            if text.startswith(label):
                return text.removeprefix(label).split()[0]
        raise AssertionError(f"{label!r} not printed:\n{self.output()}")


def _pids(data_dir: Path) -> list[int]:
    recorded = json.loads((data_dir / "up.pids").read_text())
    return [pid for pid, _ in [*recorded["children"].values(), *recorded["embedded"].values()]]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process left in the group, e.g. a dramatiq worker process."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _catalog_size(database_url: str) -> int:
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        row = conn.execute("SELECT count(*) FROM games").fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: it is private to root, and as root the embedded PostgreSQL
    # runs as the `postgres` user, who must be able to enter the data dir.
    base = Path(tempfile.mkdtemp(prefix="keysync-up-"))
    base.chmod(0o755)
    yield base / "data"
    shutil.rmtree(base, ignore_errors=True)


def test_up_survives_a_crash_syncs_and_stops_cleanly(data_dir: Path) -> None:
    port = free_port()
    leftovers: list[int] = []
    second: Up | None = None
    try:
        first = Up(data_dir, port)
        first.wait_ready()
        leftovers = _pids(data_dir)
        first.process.send_signal(signal.SIGKILL)  # a crash: children and servers remain
        first.process.wait()
        assert any(_alive(pid) for pid in leftovers)

        second = Up(data_dir, port)
        second.wait_ready()
        assert "leftover" in second.output()
        database_url = second.printed("Postgres")
        assert second.printed("API") == f"http://127.0.0.1:{port}"

        deadline = time.monotonic() + 20
        while _catalog_size(database_url) == 0:
            assert time.monotonic() < deadline, f"catalog never synced:\n{second.output()}"
            time.sleep(0.5)
        # Series written by the worker and scheduler processes reach the web's /metrics
        # (multiprocess mode): the scheduler fires its due ticks at start, the worker runs them.
        deadline = time.monotonic() + 20
        while True:
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            assert metrics.status_code == 200
            if all(
                f"{name}{{" in metrics.text
                for name in ("keysync_jobs_total", "keysync_scheduler_ticks_total")
            ):
                break
            assert time.monotonic() < deadline, metrics.text[-3000:]
            time.sleep(0.5)

        pids = _pids(data_dir)
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(40) == 0, second.output()
        assert "nothing left running" in second.output()
        still = [pid for pid in {*pids, *leftovers} if _alive(pid) or _group_alive(pid)]
        assert not still, f"left running: {still}\n{second.output()}"
        assert not (data_dir / "up.pids").exists()
    finally:
        # Never leak servers into the rest of the suite, whatever failed above.
        for up in (second,):
            if up is not None and up.process.poll() is None:
                up.process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    up.process.wait(30)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
