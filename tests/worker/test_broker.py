"""Only the dramatiq entry module (`jobs`) binds a global broker; everyone else builds one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from keysync.settings import SettingsError
from worker.broker import make_broker

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import dramatiq.broker

import keysync.cli, keysync.resources, services.ops.status, web.app, worker.scheduler
from keysync.settings import get_settings
from web.app import create_app
from worker.broker import make_broker
from worker.enqueue import Actor

create_app()
built = make_broker(get_settings())
assert dramatiq.broker.global_broker is None, "bound before jobs was imported"

import jobs

assert dramatiq.broker.global_broker is jobs.broker and jobs.broker is not built
assert jobs.broker.get_declared_actors() == {actor.value for actor in Actor}
print("ok")
"""


def test_only_importing_jobs_binds_the_global_broker() -> None:
    # A fresh interpreter: this one has imported `jobs` already (the `broker` fixture).
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=dict(os.environ),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def test_make_broker_names_a_missing_broker_url(settings: Any) -> None:
    with pytest.raises(SettingsError, match="BROKER_URL"):
        make_broker(settings.model_copy(update={"broker_url": ""}))


def test_make_broker_talks_to_broker_url(settings: Any, redis_client: Any) -> None:
    broker = make_broker(settings)
    try:
        assert broker.client.ping()
    finally:
        broker.close()
