"""`keysync up`: bring the stack up in order, supervise it, stop all of it once.

Order: embedded PostgreSQL/Redis when DATABASE_URL/REDIS_URL are unset, migrations, the
G2A simulator when G2A_API_URL is unset, a first sync, then web + worker + scheduler.
A signal (Ctrl-C, SIGTERM, SIGHUP) or a long-running child that dies stops everything.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.exc import SQLAlchemyError

from keysync.devstack.dev_admin import (
    ADMIN_FILE,
    DEV_ADMIN_EMAIL,
    DevAdmin,
    announce_lines,
    ensure_dev_admin,
)
from keysync.devstack.dev_secrets import up_secrets
from keysync.devstack.procs import port_free, wait_port
from keysync.devstack.stack import Stack
from keysync.embedded import (
    CLUSTER_BASES,
    EmbeddedError,
    EmbeddedPostgres,
    EmbeddedRedis,
    blocked_for_postgres,
    cluster_dir_outside,
    free_port,
)
from keysync.exit_codes import ExitCode
from keysync.settings import Settings, SettingsError
from services.errors import DomainError

# The simulator accepts any credentials it is started with; these are dev-only values,
# wired into the simulator and into our processes alike.
SIM_EMAIL = "sim@keysync.local"
SIM_API_HASH = "sim-api-hash"
SIM_API_SECRET = "sim-api-secret"


@dataclass(frozen=True)
class UpOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    sim_products: int = 1000
    skip_initial_sync: bool = False


def run(settings: Settings, options: UpOptions) -> ExitCode | int:
    """Run the stack until stopped; the exit code (docs/operations.md §3)."""
    data_dir = settings.keysync_data_dir.resolve()
    # Set in the environment or .env: then its meaning is kept, never silently moved.
    explicit_data_dir = "keysync_data_dir" in settings.model_fields_set
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "up.lock", "w") as lock_file:  # held for the whole run
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SettingsError(
                "KEYSYNC_DATA_DIR",
                f"{data_dir} is in use by another `keysync up`; stop it or choose another "
                "data dir",
            ) from None
        stack = Stack(data_dir=data_dir, out=sys.stdout, colour=sys.stdout.isatty())
        _stop_on_signals(stack)
        try:
            stack.kill_leftovers()
            if not port_free(options.host, options.port):
                stack.say("up", f"port {options.port} is in use; choose another with --port")
                return ExitCode.CONFIG
            return _bring_up(stack, settings, options, explicit_data_dir)
        except (EmbeddedError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or b""
            stack.say("up", f"cannot start an embedded server: {exc} {detail.decode()[-500:]}")
            return ExitCode.CONFIG
        finally:
            stack.shutdown()
            stack.say("up", "stopped; nothing left running")


def _stop_on_signals(stack: Stack) -> None:
    def on_signal(signum: int, _: object) -> None:
        if not stack.stop.is_set():
            stack.say("up", f"{signal.Signals(signum).name} received; shutting down")
        stack.stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)


def _mask(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _postgres_dir(stack: Stack, explicit_data_dir: bool) -> Path | None:
    """Where the embedded cluster lives: KEYSYNC_DATA_DIR/postgres, unless we are root and
    the `postgres` user cannot get there (a checkout under /root): then, for the default
    data dir only, a per-data-dir directory under /var/lib/keysync it can own. None (after
    saying why) when there is no such place."""
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


def _start_servers(stack: Stack, settings: Settings, explicit_data_dir: bool) -> bool:
    """Embedded PostgreSQL and Redis for what is not configured, their URLs put into the
    children's environment. False when PostgreSQL has nowhere to live."""
    env = stack.env
    if not settings.database_url:
        pg_dir = _postgres_dir(stack, explicit_data_dir)
        if pg_dir is None:
            return False
        pg = EmbeddedPostgres(pg_dir)
        stack.embedded.append(pg)
        pg.start()
        stack.record()
        env["DATABASE_URL"] = pg.url
    if not settings.redis_url:
        redis_dir = stack.data_dir / "redis"
        stack.say("up", f"starting embedded Redis (append-only file in {redis_dir})")
        server = EmbeddedRedis(redis_dir, persist=True)
        stack.embedded.append(server)
        server.start()
        stack.record()
        env["REDIS_URL"] = server.url
        if not os.environ.get("BROKER_URL"):
            env["BROKER_URL"] = server.url
    return True


def _start_simulator(stack: Stack, web_port: int, products: int) -> bool:
    """The G2A simulator on a free port, our processes pointed at it; False if it did not
    start listening."""
    sim_port = free_port()
    stack.env.update(
        {
            "G2A_API_URL": f"http://127.0.0.1:{sim_port}",
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
        str(products),
        "--webhook-url",
        f"http://127.0.0.1:{web_port}/webhooks/g2a",
    )
    return wait_port(sim_port, 30, stack.stop)


def _bring_up(
    stack: Stack, settings: Settings, options: UpOptions, explicit_data_dir: bool
) -> ExitCode | int:
    """Start everything in order; return the exit code once stopped (signal or a crash)."""
    # A failed step ends the run with its code, unless it failed because we are stopping.
    def failed(code: ExitCode | int) -> ExitCode | int:
        return ExitCode.OK if stack.stop.is_set() else code

    stack.env = _child_env(stack.data_dir)
    stack.env.update(up_secrets(stack.data_dir, settings, lambda line: stack.say("up", line)))
    if not _start_servers(stack, settings, explicit_data_dir):
        return ExitCode.CONFIG
    if stack.stop.is_set():
        return ExitCode.OK

    migrate = stack.wait(stack.spawn("migrate", "db", "upgrade", expected_exit=True), 120)
    if migrate != 0:
        stack.say("up", f"migrations failed (exit {migrate}); stopping")
        return failed(migrate or ExitCode.UNREACHABLE)
    admin = _dev_admin(stack, settings)

    if not settings.g2a_api_url and not _start_simulator(
        stack, options.port, options.sim_products
    ):
        stack.say("up", "the G2A simulator did not start; stopping")
        return failed(ExitCode.UNREACHABLE)

    if not options.skip_initial_sync and not stack.stop.is_set():
        code = stack.wait(stack.spawn("sync", "sync", "--wait", expected_exit=True), 600)
        if code != 0:
            # The catalog can be synced later (the scheduler, `keysync sync`); a laptop
            # stack that refuses to start because G2A hiccuped helps nobody.
            stack.say("up", f"first sync did not succeed (exit {code}); continuing")

    if stack.stop.is_set():
        return ExitCode.OK
    stack.spawn("web", "serve", "--host", options.host, "--port", str(options.port))
    stack.spawn("worker", "worker")
    stack.spawn("scheduler", "scheduler")
    if wait_port(options.port, 60, stack.stop):
        _announce(stack, settings, options, admin)
    return _supervise(stack)


def _dev_admin(stack: Stack, settings: Settings) -> DevAdmin:
    """The console's development admin; a failure costs the sign-in hint, not the stack."""
    try:
        return ensure_dev_admin(stack.data_dir,
                                settings.database_url or stack.env["DATABASE_URL"])
    except (SQLAlchemyError, DomainError, OSError, ValueError) as exc:
        return DevAdmin(email=DEV_ADMIN_EMAIL, path=stack.data_dir / ADMIN_FILE, password=None,
                        note=f"no development admin ({type(exc).__name__}: {exc})")


def _announce(stack: Stack, settings: Settings, options: UpOptions, admin: DevAdmin) -> None:
    host = "127.0.0.1" if options.host in ("0.0.0.0", "") else options.host
    api = f"http://{host}:{options.port}"
    env = stack.env
    for line in (
        "keysync is up:",
        f"  API        {api}   (docs {api}/docs, metrics {api}/metrics)",
        *announce_lines(admin, f"{api}/admin"),
        f"  G2A        {settings.g2a_api_url or env['G2A_API_URL']}",
        f"  Postgres   {_mask(settings.database_url or env['DATABASE_URL'])}",
        f"  Redis      {_mask(settings.redis_url or env['REDIS_URL'])}",
        f"  data dir   {stack.data_dir}",
        "Ctrl-C stops everything.",
    ):
        stack.say("up", line)


def _supervise(stack: Stack) -> ExitCode:
    """Until a signal: a long-running child that exits stops the whole stack."""
    while not stack.stop.wait(0.5):
        for child in stack.children:
            if not child.expected_exit and child.process.poll() is not None:
                stack.say(
                    "up", f"{child.name} exited with code {child.process.returncode}; stopping"
                )
                return ExitCode.CHILD_DIED
    return ExitCode.OK
