"""A dramatiq worker in its own process tree, started as `keysync worker` starts it (same
idle poll), with extra benchmark modules loaded beside `jobs`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from keysync.cli.processes import IDLE_POLL_MS

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def worker_process(*modules: str, processes: int, threads: int) -> Iterator[int]:
    """`dramatiq jobs *modules`; yields its pid and stops the whole tree afterwards."""
    env = os.environ.copy()
    env.setdefault("dramatiq_worker_timeout", str(IDLE_POLL_MS))
    worker = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "jobs", *modules, "--processes", str(processes),
         "--threads", str(threads), "--skip-logging"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        yield worker.pid
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
