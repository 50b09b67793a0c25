"""The long-running processes (the Procfile's and the simulator): `serve`, `worker`,
`scheduler`, `g2a-sim`.

Each checks the settings it needs before importing what connects anywhere, so a
misconfigured process fails at once with exit 2 naming the variable.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from keysync.settings import get_settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", default=1, show_default=True, help="uvicorn worker processes")
def serve(host: str, port: int, workers: int) -> None:
    """The HTTP API (CONTRACT §5)."""
    settings = get_settings()
    settings.require_secrets()
    settings.require("database_url", "redis_url", "broker_url")
    import uvicorn

    uvicorn.run("web.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_config=None, access_log=False)


@click.command()
@click.option("--processes", default=1, show_default=True, help="worker processes")
@click.option("--threads", default=4, show_default=True, help="threads per process")
def worker(processes: int, threads: int) -> None:
    """Dramatiq worker for every actor of `jobs`."""
    settings = get_settings()
    settings.require_secrets()
    settings.require("database_url", "redis_url", "broker_url")
    args = ["dramatiq", "jobs", "--processes", str(processes), "--threads", str(threads),
            "--skip-logging"]
    os.execvp(sys.executable, [sys.executable, "-m", *args])


@click.command()
def scheduler() -> None:
    """Cron loop (CONTRACT §1); run several: one leader fires, the others stand by."""
    settings = get_settings()
    settings.require_secrets()
    settings.require("redis_url", "broker_url")
    # Imported only once the settings are known good: importing `jobs` (where each actor
    # module declares its schedule) binds the broker the cron jobs are sent through.
    from jobs import broker, schedule
    from keysync.resources import make_redis
    from worker.scheduler import main as run_scheduler

    run_scheduler(make_redis(settings.redis_url), broker, schedule(settings))


@click.command("g2a-sim")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True)
@click.option("--products", default=1000, show_default=True)
@click.option("--seed", default=42, show_default=True)
@click.option("--rate-limit-per-min", default=600, show_default=True, help="0 = unlimited")
@click.option("--webhook-url", default=None, help="send signed status webhooks here")
@click.option(
    "--webhook-secret",
    default=None,
    envvar="G2A_SIM_WEBHOOK_SECRET",
    help="whsec_ secret for the webhooks (default: first of WEBHOOK_SECRETS)",
)
def g2a_sim(webhook_secret: str | None, **options: Any) -> None:
    """A local G2A Export API simulator (CONTRACT §6) for tests, `keysync up` and benchmarks.

    \b
    Test controls (JSON bodies; docs/sync.md "Simulator controls"):
      POST /_sim/faults {rate, status, latency_ms, count, skip, paths, only, empty_listing}
           inject errors (status 0 = malformed JSON) or latency; `skip` requests pass
           first, then `count` are hit; `only`: "listing" or "lookup" (?id=);
           `empty_listing`: listings answer 200 {total: 0, docs: []}
      DELETE /_sim/faults
      POST /_sim/drift {after, remove_id?}   after N listing requests remove a product
           from page 1 and add one at the end (total unchanged); DELETE /_sim/drift
      POST /_sim/mutate {changed, added, removed, out_of_stock}
      GET /_sim/stats, POST /_sim/reset, POST /_sim/config {rate_limit_per_min, ...}
    """
    from g2a_sim.server import run

    settings = get_settings()
    secret = webhook_secret or next(iter(settings.webhook_secrets.get_secret_value().split()),
                                    None)
    # Credentials default to the simulator's own unless G2A_* are set (then the two agree).
    options.update(
        (name, value)
        for name, value in (("email", settings.g2a_email),
                            ("api_hash", settings.g2a_api_hash.get_secret_value()),
                            ("api_secret", settings.g2a_api_secret.get_secret_value()))
        if value
    )
    # The options are run()'s own parameters, named alike: passed through as they are.
    run(webhook_secret=secret, **options)
