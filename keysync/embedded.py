"""Throwaway or persistent PostgreSQL and Redis servers started from the system binaries.

Used by `keysync up` (data kept under KEYSYNC_DATA_DIR between runs) and by the test suite
(a temporary directory, removed afterwards) when no URL is given. PostgreSQL refuses to run
as root, so when we are root the cluster is owned by and run as the `postgres` user, and
its directory must be one that user can enter: not under a private home such as /root
(`blocked_for_postgres`, `cluster_dir_outside`, `scratch_dir`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


class EmbeddedError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise EmbeddedError(
        f"PostgreSQL binary {name!r} not found; install postgresql or set DATABASE_URL"
    )


def _postgres_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise EmbeddedError("running as root needs a 'postgres' system user") from exc


def blocked_for_postgres(path: Path) -> Path | None:
    """As root: the first existing directory on the way to `path` (itself included) that the
    `postgres` user may not enter. None when we are not root or nothing is in the way.

    Judged from owner, group and mode bits (ACLs are not consulted)."""
    user = _postgres_user()
    if user is None:
        return None
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    path = Path(os.path.abspath(path))
    for directory in [*reversed(path.parents), path]:
        try:
            st = directory.stat()
        except FileNotFoundError:
            break  # not there yet; EmbeddedPostgres.start checks again once created
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


# Where a cluster goes when its data dir is out of the postgres user's reach (as root), in
# order of preference: /var/lib is where services keep state; /var/tmp survives reboots.
CLUSTER_BASES = (Path("/var/lib/keysync"), Path("/var/tmp/keysync"))


def _usable_base(base: Path) -> bool:
    """A root-owned directory nobody else may write to (a pre-planted /var/tmp/keysync
    from another user must not receive our data), enterable by the postgres user."""
    try:
        base.mkdir(mode=0o755, parents=True, exist_ok=True)
        st = base.lstat()
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        return False
    if not os.access(base, os.W_OK):  # e.g. a read-only /var
        return False
    return blocked_for_postgres(base) is None


def cluster_dir_outside(data_dir: Path, bases: tuple[Path, ...] = CLUSTER_BASES) -> Path | None:
    """A PostgreSQL directory for `data_dir` that the postgres user can own: one per data
    dir (so per checkout for the default ./.keysync), the same on every start so the data
    stays. None when no base directory is usable."""
    data_dir = Path(os.path.abspath(data_dir))
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    label = re.sub(r"[^A-Za-z0-9._-]", "_", data_dir.parent.name)[:40] or "root"
    for base in bases:
        if not _usable_base(base):
            continue
        home = base / f"{label}-{digest}"
        try:
            home.mkdir(mode=0o755, exist_ok=True)
            home.chmod(0o755)
            # Says which data dir this belongs to, for whoever lists the base directory.
            (home / "data_dir").write_text(f"{data_dir}\n")
        except OSError:
            continue
        return home / "postgres"
    return None


def scratch_dir(prefix: str) -> Path:
    """A fresh temporary directory (mode 0755) an embedded PostgreSQL can live under, even
    as root with TMPDIR inside a private home; the caller removes it."""
    for base in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        if blocked_for_postgres(Path(base)) is not None:
            continue
        with contextlib.suppress(OSError):
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
            path.chmod(0o755)
            return path
    raise EmbeddedError(
        "no temporary directory the 'postgres' user can enter (tried TMPDIR, /tmp, /var/tmp)"
    )


def _run_as() -> tuple[Callable[[], None] | None, int | None, int | None]:
    user = _postgres_user()
    if user is None:
        return None, None, None

    def demote() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return demote, user.pw_uid, user.pw_gid


def _wait_for_port(
    port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedError(f"server exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise EmbeddedError(f"server did not listen on port {port} within {timeout_s}s")


def _stop(process: subprocess.Popen[bytes] | None, first: signal.Signals, timeout_s: float) -> None:
    """Ask a server to stop with `first`; SIGKILL it if it has not within `timeout_s`."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(first)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> EmbeddedPostgres:
        demote, uid, gid = _run_as()
        pgdata = self.data_dir / "pgdata"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Checked once every parent exists: one made under a strict umask blocks too.
        blocked = blocked_for_postgres(self.data_dir.parent)
        if blocked is not None:
            raise EmbeddedError(
                f"PostgreSQL cannot run as root, and the 'postgres' user it runs as cannot "
                f"enter {blocked}: put its data dir ({self.data_dir}) somewhere it can reach"
            )
        if uid is not None and gid is not None:
            os.chown(self.data_dir, uid, gid)
        if not (pgdata / "PG_VERSION").exists():
            subprocess.run(
                [
                    _pg_bin("initdb"),
                    "-D",
                    str(pgdata),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                preexec_fn=demote,
                # Not our cwd: it may be a checkout under /root, which `postgres` cannot enter.
                cwd=self.data_dir,
            )
        self._recover_stale(pgdata)
        self.port = self.port or free_port()
        log_file = open(self.data_dir / "postgres.log", "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [
                _pg_bin("postgres"),
                "-D",
                str(pgdata),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.data_dir),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=demote,
            cwd=self.data_dir,
            start_new_session=True,
        )
        _wait_for_port(self.port, 30, self.process)
        self._wait_ready()
        log.info("embedded postgres started", port=self.port, data_dir=str(self.data_dir))
        return self

    def _recover_stale(self, pgdata: Path) -> None:
        """After a kill -9 the postmaster.pid survives; stop its owner if alive, else drop it."""
        pid_file = pgdata / "postmaster.pid"
        if not pid_file.exists():
            return
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGQUIT)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.05)
        pid_file.unlink(missing_ok=True)

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(
                    f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                    connect_timeout=2,
                ):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        _stop(self.process, signal.SIGINT, 15)  # SIGINT: PostgreSQL's fast shutdown
        self.process = None


@dataclass
class EmbeddedRedis:
    data_dir: Path
    port: int = 0
    persist: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedError("redis-server not found; install redis or set REDIS_URL")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        persistence = (
            ["--appendonly", "yes"] if self.persist else ["--save", "", "--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--databases",
                "64",
                *persistence,
                "--logfile",
                str(self.data_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_for_port(self.port, 10, self.process)
        log.info("embedded redis started", port=self.port)
        return self

    def stop(self) -> None:
        _stop(self.process, signal.SIGTERM, 10)
        self.process = None
