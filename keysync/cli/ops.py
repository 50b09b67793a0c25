"""Operations commands: `scheduler`, `status`, and `up` (the whole system on a laptop)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import click
import structlog

from keysync.cli import EXIT_CONFIG, EXIT_OK, EXIT_UNREACHABLE, main
from keysync.settings import (
    SECRET_HINTS,
    Settings,
    SettingsError,
    generate_secret,
    get_settings,
    validate_secret,
)

log = structlog.get_logger(__name__)


# --- scheduler --------------------------------------------------------------------------


@main.command()
def scheduler() -> None:
    """Cron loop (CONTRACT §1); run several: one leader fires, the others stand by."""
    # Checked before importing `worker`, which binds the broker: a misconfigured
    # scheduler fails at once with exit 2 instead of touching Redis.
    settings = get_settings()
    settings.require_secrets()
    settings.require("redis_url", "broker_url")
    from keysync.resources import make_redis
    from worker import broker
    from worker.scheduler import main as run_scheduler

    run_scheduler(
        make_redis(settings.redis_url),
        broker,
        sync_cron=settings.sync_cron,
        stock_check_cron=settings.stock_check_cron,
    )


# --- status -----------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
def status(as_json: bool) -> None:
    """Health and backlog of every part: DB, Redis, broker, cache, queues, syncs, scheduler.

    Exit 0 whenever a report could be made, even one saying dependencies are down (read
    `ok` and each `*.ok`); 5 only when none of Postgres, Redis and the broker answered,
    so nothing beyond "unreachable" could be reported; 2 on configuration errors.
    """
    from db.session import make_engine, make_session_factory
    from keysync.resources import make_redis
    from services.ops.status import StatusSources, collect

    settings = get_settings()
    settings.require("database_url", "redis_url", "broker_url")
    engine = make_engine(settings.database_url, pool_size=1, application_name="keysync-status")
    sources = StatusSources(
        engine=engine,
        sessions=make_session_factory(engine),
        cache_redis=make_redis(settings.redis_url),
        broker_redis=make_redis(settings.broker_url),
    )
    try:
        report = collect(sources)
    finally:
        engine.dispose()
        sources.cache_redis.close()
        sources.broker_redis.close()
    if as_json:
        click.echo(json.dumps(report, default=str))
    else:
        _print_status(report)
    nothing_answered = not any(report[n]["ok"] for n in ("database", "redis", "broker"))
    sys.exit(EXIT_UNREACHABLE if nothing_answered else EXIT_OK)


def _print_status(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()

    def mark(ok: bool | None) -> str:
        return "[green]ok[/]" if ok else "[red]DOWN[/]"

    health = Table(title="dependencies", show_header=True)
    for column in ("", "state", "latency ms", "error"):
        health.add_column(column)
    for name in ("database", "redis", "broker"):
        probe = report[name]
        health.add_row(
            name, mark(probe["ok"]), str(probe["latency_ms"] or ""), probe["error"] or ""
        )
    console.print(health)
    cache = report["cache"]
    console.print(
        f"cache: {'[yellow]degraded[/]' if cache['degraded'] else '[green]healthy[/]'}, "
        f"outbox pending {cache['outbox_pending']}; "
        f"job outbox pending {report['job_outbox']['pending']}"
    )
    if report["queues"] is not None:
        queues = Table(title="queues")
        for column in ("queue", "ready", "delayed", "in progress", "dead"):
            queues.add_column(column)
        for name, q in report["queues"].items():
            queues.add_row(
                name, str(q["ready"]), str(q["delayed"]), str(q["in_progress"]), str(q["dead"])
            )
        console.print(queues)
        if report["dead_letters"]:
            console.print(f"dead letters by actor: {report['dead_letters']}")
    if report["sync_lock"] is not None:
        lock = report["sync_lock"]
        held = f"held by {lock['holder']}… ({lock['ttl_ms']} ms left)" if lock["held"] else "free"
        console.print(f"sync lock: {held}; fence {lock['fence']}; progress {lock['progress']}")
    if report["last_runs"] is not None:
        runs = Table(title="last runs (added / updated / unchanged / removed / errors)")
        for column in ("kind", "status", "started (UTC)", "seconds", "counts"):
            runs.add_column(column)
        for kind, run in report["last_runs"].items():
            if run is None:
                runs.add_row(kind, "never", "", "", "")
                continue
            counts = " / ".join(
                str(run[k]) for k in ("added", "updated", "unchanged", "removed", "errors")
            )
            started = run["started_at"][:19].replace("T", " ")
            runs.add_row(kind, run["status"], started, str(run["duration_s"]), counts)
        console.print(runs)
    guard = report.get("removal_guard")
    if guard and guard["active"]:
        console.print(f"[red]removal guard active[/] since {guard['since']}: {guard['detail']}")
    if report["webhook_events"] is not None:
        console.print(f"webhook events: {report['webhook_events']}")
    sched = report["scheduler"]
    if sched is not None:
        console.print(
            f"scheduler: leader {sched['leader'] or '[red]none[/]'}, "
            f"running {len(sched['schedulers'])}: {', '.join(sched['schedulers'])}"
        )
        for name, job in sched["jobs"].items():
            console.print(f"  {name:<22} next {job['next_fire']}")
    overall = "[green]OK[/]" if report["ok"] else "[red]NOT OK[/]"
    console.print(f"overall: {overall}")


# --- up ---------------------------------------------------------------------------------

# The simulator accepts any credentials it is started with; these are dev-only values,
# wired into the simulator and into our processes alike.
SIM_EMAIL = "sim@keysync.local"
SIM_API_HASH = "sim-api-hash"
SIM_API_SECRET = "sim-api-secret"

_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta")
PIDS_FILE = "up.pids"
SECRETS_FILE = "secrets.json"


def _mask(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _started_at(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot): with the pid, a process
    identity that survives pid reuse. None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _group_alive(pgid: int) -> bool:
    """True while any process of group `pgid` runs. Zombies do not count: after a crash
    our orphans are reparented to PID 1, which in a container may never reap them."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _kill_group(pgid: int, timeout_s: float, first: signal.Signals = signal.SIGTERM) -> None:
    """Signal a process group (`first`), SIGKILL what is left after `timeout_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, first)
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _wait_port(port: int, timeout_s: float, stop: threading.Event) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop.is_set():
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.1)
    return False


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    expected_exit: bool = False  # one-shot steps (migrate, first sync) end by themselves


@dataclass
class Stack:
    """Everything `keysync up` started, so that it can all be stopped, even after a crash."""

    data_dir: Path
    out: IO[str]
    colour: bool
    env: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    embedded: list[Any] = field(default_factory=list)  # EmbeddedPostgres / EmbeddedRedis
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

        def identity(process: subprocess.Popen[bytes] | None) -> list[Any] | None:
            if process is None or process.poll() is not None:
                return None
            return [process.pid, _started_at(process.pid)]

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
            now_started = _started_at(pid)
            if now_started is not None and now_started != started:
                continue
            if _group_alive(pid):
                self.say("up", f"stopping leftover {name} (pid {pid}) of an earlier run")
                # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for clients.
                first = signal.SIGINT if name == "EmbeddedPostgres" else signal.SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, first)
                leftovers.append(pid)
        deadline = time.monotonic() + 10
        while any(map(_group_alive, leftovers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        path.unlink(missing_ok=True)

    # -- processes -----------------------------------------------------------------------

    def spawn(self, name: str, *args: str, expected_exit: bool = False) -> Child:
        argv = [
            sys.executable,
            "-c",
            "from keysync.cli import main; main(prog_name='keysync')",
            *args,
        ]
        process = subprocess.Popen(
            argv,
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
        assert process.stdout is not None
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
        _kill_group(child.process.pid, 5)
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
                _kill_group(child.process.pid, 0.5)
        for server in reversed(self.embedded):
            self.say("up", f"stopping {type(server).__name__}")
            server.stop()
        (self.data_dir / PIDS_FILE).unlink(missing_ok=True)


def _write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with a file only its owner may read (0600 from birth)."""
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def _up_secrets(stack: Stack, settings: Settings) -> dict[str, str]:
    """JWT_SECRET, KEY_ENCRYPTION_KEY and WEBHOOK_SECRETS for the children: the configured
    value when there is one, else a random one generated on the first start and kept in
    KEYSYNC_DATA_DIR/secrets.json (0600), so tokens, stored keys and webhook signatures
    stay valid across restarts. Never printed."""
    path = stack.data_dir / SECRETS_FILE
    stored: dict[str, str] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            if not isinstance(loaded, dict):
                raise ValueError("not a JSON object")
            stored = {str(k): str(v) for k, v in loaded.items()}
            # Whoever loosened the mode, the file holds live secrets.
            path.chmod(0o600)
        except (OSError, ValueError) as exc:
            raise SettingsError(
                "KEYSYNC_DATA_DIR",
                f"{path} is unreadable ({exc}); repair it, or delete it to generate new "
                "secrets (tokens and stored game keys made with the old ones become unusable)",
            ) from None
    chosen: dict[str, str] = {}
    generated: list[str] = []
    for name in SECRET_HINTS:
        variable = name.upper()
        configured = getattr(settings, name).get_secret_value()
        if configured:
            chosen[variable] = configured
            continue
        if variable not in stored:
            stored[variable] = generate_secret(name)
            generated.append(variable)
        chosen[variable] = stored[variable]
    for variable, value in chosen.items():
        try:
            # Same check as the children apply, so a damaged file fails here, once.
            validate_secret(variable.lower(), value)
        except ValueError as exc:
            raise SettingsError(
                "KEYSYNC_DATA_DIR",
                f"{variable} in {path} is invalid ({exc}); repair or delete the file (tokens "
                "and stored game keys made with the old secrets become unusable)",
            ) from None
    if generated:
        _write_private(path, json.dumps(stored, indent=2) + "\n")
        stack.say("up", f"generated {', '.join(generated)} (kept in {path}, mode 0600)")
    from_file = [v for v in chosen if v in stored and v not in generated]
    if from_file:
        stack.say("up", f"using {', '.join(from_file)} from {path}")
    return chosen


def _postgres_dir(stack: Stack, explicit_data_dir: bool) -> Path | None:
    """Where the embedded cluster lives: KEYSYNC_DATA_DIR/postgres, unless we are root and
    the `postgres` user cannot get there (a checkout under /root): then, for the default
    data dir only, a per-data-dir directory under /var/lib/keysync it can own. None (after
    saying why) when there is no such place."""
    from keysync.embedded import CLUSTER_BASES, blocked_for_postgres, cluster_dir_outside

    data_dir = stack.data_dir
    preferred = data_dir / "postgres"
    blocked = blocked_for_postgres(preferred)
    if blocked is None:
        stack.say("up", f"starting embedded PostgreSQL (data in {preferred})")
        return preferred
    reason = (
        f"PostgreSQL refuses to run as root, and the 'postgres' user it runs as cannot "
        f"enter {blocked}"
    )
    if explicit_data_dir:
        stack.say(
            "up",
            f"KEYSYNC_DATA_DIR {data_dir}: {reason}; choose a data dir it can reach (every "
            "parent enterable by it), unset KEYSYNC_DATA_DIR to keep the cluster under "
            f"{CLUSTER_BASES[0]}, or set DATABASE_URL",
        )
        return None
    outside = cluster_dir_outside(data_dir)
    if outside is None:
        stack.say(
            "up",
            f"{reason}, and none of {', '.join(map(str, CLUSTER_BASES))} is usable (a "
            "root-owned directory nobody else can write); set KEYSYNC_DATA_DIR to a "
            "directory the 'postgres' user can reach, or DATABASE_URL",
        )
        return None
    stack.say(
        "up",
        f"starting embedded PostgreSQL (data in {outside}: the 'postgres' user cannot enter "
        f"{blocked})",
    )
    return outside


def _child_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")}
    metrics_dir = data_dir / "metrics"
    # Fresh per run: multiprocess files of dead processes would otherwise be summed in.
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env.update(
        {
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "PYTHONUNBUFFERED": "1",
            "KEYSYNC_DATA_DIR": str(data_dir),
        }
    )
    return env


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="web listen address")
@click.option("--port", default=8000, show_default=True, help="web port")
@click.option("--sim-products", default=1000, show_default=True, help="simulator catalog size")
@click.option("--skip-initial-sync", is_flag=True, help="do not sync before starting web")
def up(host: str, port: int, sim_products: int, skip_initial_sync: bool) -> None:
    """Everything on one machine: embedded Postgres/Redis and G2A simulator when not
    configured, migrations, a first sync, then web + worker + scheduler. Ctrl-C stops all.
    """
    from keysync.embedded import EmbeddedError

    settings = get_settings()
    data_dir = settings.keysync_data_dir.resolve()
    # Set in the environment or .env: then its meaning is kept, never silently moved.
    explicit_data_dir = "keysync_data_dir" in settings.model_fields_set
    data_dir.mkdir(parents=True, exist_ok=True)
    lock_file = open(data_dir / "up.lock", "w")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        click.echo(
            f"error: configuration: KEYSYNC_DATA_DIR {data_dir} is in use by another "
            "`keysync up`; stop it or choose another data dir",
            err=True,
        )
        sys.exit(EXIT_CONFIG)

    stack = Stack(data_dir=data_dir, out=sys.stdout, colour=sys.stdout.isatty())

    def on_signal(signum: int, _: object) -> None:
        if not stack.stop.is_set():
            stack.say("up", f"{signal.Signals(signum).name} received; shutting down")
        stack.stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)

    exit_code = EXIT_OK
    try:
        stack.kill_leftovers()
        if not _port_free(host, port):
            stack.say("up", f"port {port} is in use; choose another with --port")
            exit_code = EXIT_CONFIG
            return
        exit_code = _bring_up(
            stack, settings, host, port, sim_products, skip_initial_sync, explicit_data_dir
        )
    except (EmbeddedError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or b""
        stack.say("up", f"cannot start an embedded server: {exc} {detail.decode()[-500:]}")
        exit_code = EXIT_CONFIG
    finally:
        stack.shutdown()
        stack.say("up", "stopped; nothing left running")
        lock_file.close()
    sys.exit(exit_code)


def _bring_up(
    stack: Stack,
    settings: Settings,
    host: str,
    port: int,
    sim_products: int,
    skip_sync: bool,
    explicit_data_dir: bool,
) -> int:
    """Start everything in order; return the exit code once stopped (signal or a crash)."""
    from keysync.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

    data_dir = stack.data_dir
    env = _child_env(data_dir)
    env.update(_up_secrets(stack, settings))
    stack.env = env
    database_url = settings.database_url
    if not database_url:
        pg_dir = _postgres_dir(stack, explicit_data_dir)
        if pg_dir is None:
            return EXIT_CONFIG
        pg = EmbeddedPostgres(pg_dir)
        stack.embedded.append(pg)
        pg.start()
        stack.record()
        database_url = pg.url
        env["DATABASE_URL"] = database_url
    redis_url = settings.redis_url
    if not redis_url:
        stack.say("up", f"starting embedded Redis (append-only file in {data_dir / 'redis'})")
        server = EmbeddedRedis(data_dir / "redis", persist=True)
        stack.embedded.append(server)
        server.start()
        stack.record()
        redis_url = server.url
        env["REDIS_URL"] = redis_url
        if not os.environ.get("BROKER_URL"):
            env["BROKER_URL"] = redis_url
    if stack.stop.is_set():
        return EXIT_OK

    migrate = stack.wait(stack.spawn("migrate", "db", "upgrade", expected_exit=True), 120)
    if migrate != 0:
        stack.say("up", f"migrations failed (exit {migrate}); stopping")
        return EXIT_OK if stack.stop.is_set() else (migrate or EXIT_UNREACHABLE)

    sim_url = settings.g2a_api_url
    if not sim_url:
        sim_port = free_port()
        sim_url = f"http://127.0.0.1:{sim_port}"
        env.update(
            {
                "G2A_API_URL": sim_url,
                "G2A_EMAIL": SIM_EMAIL,
                "G2A_API_HASH": SIM_API_HASH,
                "G2A_API_SECRET": SIM_API_SECRET,
            }
        )
        stack.spawn(
            "g2a-sim",
            "g2a-sim",
            "--port",
            str(sim_port),
            "--products",
            str(sim_products),
            "--webhook-url",
            f"http://127.0.0.1:{port}/webhooks/g2a",
        )
        if not _wait_port(sim_port, 30, stack.stop):
            stack.say("up", "the G2A simulator did not start; stopping")
            return EXIT_OK if stack.stop.is_set() else EXIT_UNREACHABLE

    if not skip_sync and not stack.stop.is_set():
        code = stack.wait(stack.spawn("sync", "sync", "--wait", expected_exit=True), 600)
        if code != 0:
            # The catalog can be synced later (the scheduler, `keysync sync`); a laptop
            # stack that refuses to start because G2A hiccuped helps nobody.
            stack.say("up", f"first sync did not succeed (exit {code}); continuing")

    if stack.stop.is_set():
        return EXIT_OK
    stack.spawn("web", "serve", "--host", host, "--port", str(port))
    stack.spawn("worker", "worker")
    stack.spawn("scheduler", "scheduler")
    if _wait_port(port, 60, stack.stop):
        api = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        for line in (
            "keysync is up:",
            f"  API        {api}   (docs {api}/docs, metrics {api}/metrics)",
            f"  G2A        {sim_url}",
            f"  Postgres   {_mask(database_url)}",
            f"  Redis      {_mask(redis_url)}",
            f"  data dir   {data_dir}",
            "Ctrl-C stops everything.",
        ):
            stack.say("up", line)

    while not stack.stop.wait(0.5):
        for child in stack.children:
            if not child.expected_exit and child.process.poll() is not None:
                stack.say(
                    "up", f"{child.name} exited with code {child.process.returncode}; stopping"
                )
                return 1
    return EXIT_OK
