"""Driving the operations commands: in-process (click's CliRunner) for reads and refusals,
as a real subprocess with INFO JSON logs where the `event=admin_action` line is checked."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import AdminAction
from keysync.cli import main

ROOT = Path(__file__).resolve().parents[2]
ACTOR = f"cli:{getpass.getuser()}"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        data = json.loads(self.stdout)
        assert isinstance(data, dict)
        return data

    def admin_action_logs(self) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("event") == "admin_action"]


def cli(*args: str) -> Run:
    # Wide enough that rich folds no cell of a table a test looks into.
    result = CliRunner().invoke(main, list(args), env={"COLUMNS": "250"})
    return Run(result.exit_code, result.stdout, result.stderr)


def cli_process(*args: str, **env: str) -> Run:
    """`keysync ARGS` as a real process, logging INFO as JSON on stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "keysync", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO", **env},
    )
    return Run(result.returncode, result.stdout, result.stderr)


def admin_actions(sessions: sessionmaker[Session]) -> list[AdminAction]:
    with sessions() as session:
        return list(session.scalars(select(AdminAction).order_by(AdminAction.id)))


def assert_one_audited(run: Run, sessions: sessionmaker[Session], action: str
                       ) -> AdminAction:
    """The command wrote exactly one admin_actions row and one `event=admin_action` line."""
    rows = [r for r in admin_actions(sessions) if r.action == action]
    assert len(rows) == 1, [(r.action, r.detail) for r in rows]
    row = rows[0]
    assert row.actor == ACTOR
    logs = run.admin_action_logs()
    assert len(logs) == 1, run.stderr
    assert logs[0]["action"] == action and logs[0]["actor"] == ACTOR
    assert logs[0]["admin_action_id"] == row.id
    return row
