"""What `keysync up` started, so that all of it can be stopped, even after a crash.

Each child runs in its own process group (one `killpg` stops it and whatever it forked,
such as dramatiq's worker processes) and is recorded with its start time in
`KEYSYNC_DATA_DIR/up.pids`, so the next run stops what a `kill -9`-ed one left behind
without ever signalling a pid that now belongs to another program.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import click

from keysync.devstack.procs import group_alive, kill_group, started_at
from keysync.embedded import EmbeddedPostgres, EmbeddedRedis

_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta")
PIDS_FILE = "up.pids"
# How a child runs the CLI: this interpreter and this checkout, whatever is on PATH.
_CLI = "from keysync.cli import main; main(prog_name='keysync')"

Identity = tuple[int, str | None]  # pid, kernel start time


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    expected_exit: bool = False  # one-shot steps (migrate, first sync) end by themselves


@dataclass
class Stack:
    data_dir: Path
    out: IO[str]
    colour: bool
    env: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    embedded: list[EmbeddedPostgres | EmbeddedRedis] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _write: threading.Lock = field(default_factory=threading.Lock)

    # -- output --------------------------------------------------------------------------

    def say(self, name: str, line: str) -> None:
        index = sum(name.encode()) % len(_COLOURS)
        prefix = f"{name:<10}|"
        if self.colour:
            prefix = click.style(prefix, fg=_COLOURS[index], bold=name == "up")
        with self._write:
            self.out.write(f"{prefix} {line}\n")
            self.out.flush()

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.say(name, raw.decode(errors="replace").rstrip())
        stream.close()

    # -- leftovers of a crashed run ------------------------------------------------------

    def record(self) -> None:
        """Write what is running now (pid and start time of each process group leader)."""

        def identity(process: subprocess.Popen[bytes] | None) -> Identity | None:
            if process is None or process.poll() is not None:
                return None
            return process.pid, started_at(process.pid)

        running = {c.name: identity(c.process) for c in self.children}
        embedded = {type(e).__name__: identity(e.process) for e in self.embedded}
        pids = {
            "up": os.getpid(),
            "children": {k: v for k, v in running.items() if v},
            "embedded": {k: v for k, v in embedded.items() if v},
        }
        tmp = self.data_dir / f"{PIDS_FILE}.tmp"
        tmp.write_text(json.dumps(pids))
        tmp.replace(self.data_dir / PIDS_FILE)

    def kill_leftovers(self) -> None:
        """A `keysync up` killed with -9 leaves its children (own sessions) running and
        holding ports and the Redis data files: stop them before starting anew."""
        path = self.data_dir / PIDS_FILE
        if not path.exists():
            return
        groups: list[tuple[str, int, str | None]] = []
        with contextlib.suppress(ValueError, OSError, KeyError, TypeError):
            pids = json.loads(path.read_text())
            groups = [
                (str(name), int(pid), started)
                for name, (pid, started) in [*pids["children"].items(), *pids["embedded"].items()]
            ]
        leftovers = []
        for name, pid, started in groups:
            # A pid now used by another program (other start time) is never signalled. A
            # dead leader whose group still has members is ours: Linux does not reuse a pid
            # while it is still some group's id.
            now_started = started_at(pid)
            if now_started is not None and now_started != started:
                continue
            if group_alive(pid):
                self.say("up", f"stopping leftover {name} (pid {pid}) of an earlier run")
                # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for clients.
                first = signal.SIGINT if name == EmbeddedPostgres.__name__ else signal.SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, first)
                leftovers.append(pid)
        deadline = time.monotonic() + 10
        while any(map(group_alive, leftovers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        path.unlink(missing_ok=True)

    # -- processes -----------------------------------------------------------------------

    def spawn(self, name: str, *args: str, expected_exit: bool = False) -> Child:
        process = subprocess.Popen(
            [sys.executable, "-c", _CLI, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Own process group: we stop the child and everything it forked (dramatiq's
            # worker processes) with one killpg, and a terminal's Ctrl-C reaches only us.
            start_new_session=True,
        )
        child = Child(name, process, expected_exit)
        self.children.append(child)
        self.record()
        assert process.stdout is not None  # stdout=PIPE
        threading.Thread(
            target=self._pump, args=(name, process.stdout), name=f"pump-{name}", daemon=True
        ).start()
        return child

    def wait(self, child: Child, timeout_s: float) -> int | None:
        """Wait for a one-shot child; None if it timed out or we are stopping."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stop.is_set():
            code = child.process.poll()
            if code is not None:
                return code
            time.sleep(0.1)
        kill_group(child.process.pid, 5)
        child.process.wait()
        return None

    def shutdown(self) -> None:
        alive = [c for c in self.children if c.process.poll() is None]
        if alive:
            self.say("up", f"stopping {', '.join(c.name for c in alive)}")
        for child in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in self.children:
            remaining = max(deadline - time.monotonic(), 0.1)
            try:
                child.process.wait(remaining)
            except subprocess.TimeoutExpired:
                self.say("up", f"{child.name} did not stop in time; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
            if not child.expected_exit:
                # Whatever the group leader did, no member of its group (dramatiq's worker
                # processes) may outlive us. One-shot steps were reaped long ago: their
                # pid may belong to someone else by now.
                kill_group(child.process.pid, 0.5)
        for server in reversed(self.embedded):
            self.say("up", f"stopping {type(server).__name__}")
            server.stop()
        (self.data_dir / PIDS_FILE).unlink(missing_ok=True)
