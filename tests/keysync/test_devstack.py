"""The dev stack's parts that need no servers: refusing to start (port or data dir taken),
the secrets it keeps, and stopping exactly what a crashed run left behind."""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from keysync.devstack.dev_secrets import SECRETS_FILE, up_secrets
from keysync.devstack.procs import group_alive, started_at
from keysync.devstack.stack import PIDS_FILE, Stack
from keysync.settings import SECRET_HINTS, Settings, SettingsError, validate_secret

CLI = "from keysync.cli import main; main(prog_name='keysync')"
UNSET = ("DATABASE_URL", "REDIS_URL", "BROKER_URL", "G2A_API_URL", *map(str.upper, SECRET_HINTS))


def unconfigured(**secrets: str) -> Settings:
    """Settings as the test environment has them, but with no secret configured but these."""
    return Settings(**{name: SecretStr(secrets.get(name, "")) for name in SECRET_HINTS})


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="keysync-devstack-") as base:
        yield Path(base) / "data"


def up(data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env["KEYSYNC_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-c", CLI, "up", "--port", str(port)],
        env=env, capture_output=True, text=True, timeout=60,
    )


def test_up_with_the_web_port_taken_exits_2_before_starting_anything(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = up(data_dir, port)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"port {port} is in use" in result.stdout
    assert "starting embedded" not in result.stdout
    assert result.stdout.rstrip().endswith("stopped; nothing left running")
    assert not (data_dir / PIDS_FILE).exists()


def test_a_second_up_on_the_same_data_dir_exits_2_naming_it(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    with open(data_dir / "up.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = up(data_dir, 1)  # never reached: the data dir is checked first
    assert result.returncode == 2, result.stdout + result.stderr
    assert "KEYSYNC_DATA_DIR" in result.stderr and "in use by another `keysync up`" in result.stderr
    assert result.stdout == ""


def test_secrets_are_generated_once_kept_private_and_configured_ones_win(
    data_dir: Path,
) -> None:
    data_dir.mkdir(parents=True)
    said: list[str] = []
    first = up_secrets(data_dir, unconfigured(), said.append)
    assert set(first) == {"JWT_SECRET", "KEY_ENCRYPTION_KEY", "WEBHOOK_SECRETS"}
    for variable, value in first.items():
        assert validate_secret(variable.lower(), value) == value
    path = data_dir / SECRETS_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text()) == first
    assert said and "generated" in said[0] and not any(v in said[0] for v in first.values())

    path.chmod(0o644)
    jwt = "j" * 40
    second = up_secrets(data_dir, unconfigured(jwt_secret=jwt), said.append)
    assert second == {**first, "JWT_SECRET": jwt}
    assert path.stat().st_mode & 0o777 == 0o600  # tightened again: it holds live secrets
    assert json.loads(path.read_text()) == first  # a configured value is not written down


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"JWT_SECRET": "short"}'])
def test_a_damaged_secrets_file_is_a_configuration_error(data_dir: Path, content: str) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / SECRETS_FILE).write_text(content)
    with pytest.raises(SettingsError) as error:
        up_secrets(data_dir, unconfigured(), lambda _: None)
    assert error.value.variable == "KEYSYNC_DATA_DIR" and SECRETS_FILE in error.value.problem
    assert (data_dir / SECRETS_FILE).read_text() == content  # never overwritten


def test_leftovers_of_a_crashed_run_are_stopped_but_a_reused_pid_is_not(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    ours = subprocess.Popen(["sleep", "120"], start_new_session=True)
    stranger = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        # The stranger's pid is recorded with another start time: the pid was reused.
        (data_dir / PIDS_FILE).write_text(json.dumps({
            "up": 1,
            "children": {"worker": [ours.pid, started_at(ours.pid)],
                         "web": [stranger.pid, "1"]},
            "embedded": {},
        }))
        out = io.StringIO()
        Stack(data_dir=data_dir, out=out, colour=False).kill_leftovers()
        assert ours.wait(10) == -signal.SIGTERM
        assert f"stopping leftover worker (pid {ours.pid})" in out.getvalue()
        assert stranger.poll() is None and group_alive(stranger.pid)
        assert "web" not in out.getvalue()
        assert not (data_dir / PIDS_FILE).exists()
    finally:
        for process in (ours, stranger):
            process.kill()
            process.wait()
