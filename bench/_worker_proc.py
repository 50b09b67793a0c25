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


def tree_cpu_s(root: int) -> float:
    """User+system CPU seconds of `root` and every live descendant (from /proc)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        stats[pid] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, 0.0)
        todo.extend(children.get(pid, []))
    return total
