"""Long-running processes and schema: `db upgrade`, `worker`, `serve`, `g2a-sim`."""

from __future__ import annotations

import os
import sys

import click

from keysync.cli import main
from keysync.settings import get_settings


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Alembic migrations to head (idempotent; concurrent runs serialise)."""
    from db.migrate import upgrade

    settings = get_settings()
    settings.require("database_url")
    upgrade(settings.database_url)
    click.echo("database at head")


@main.command()
@click.option("--processes", default=1, show_default=True, help="worker processes")
@click.option("--threads", default=4, show_default=True, help="threads per process")
def worker(processes: int, threads: int) -> None:
    """Dramatiq worker for every actor of `jobs`."""
    settings = get_settings()
    settings.require_secrets()
    settings.require("database_url", "redis_url", "broker_url")
    args = [
        "dramatiq",
        "jobs",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--skip-logging",
    ]
    os.execvp(sys.executable, [sys.executable, "-m", *args])


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", default=1, show_default=True, help="uvicorn worker processes")
def serve(host: str, port: int, workers: int) -> None:
    """The HTTP API (CONTRACT §5)."""
    settings = get_settings()
    settings.require_secrets()
    settings.require("database_url", "redis_url", "broker_url")
    import uvicorn

    uvicorn.run(
        "web.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
    )


@main.command("g2a-sim")
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
def g2a_sim(
    host: str,
    port: int,
    products: int,
    seed: int,
    rate_limit_per_min: int,
    webhook_url: str | None,
    webhook_secret: str | None,
) -> None:
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
    credentials = {
        name: value
        for name, value in (("email", settings.g2a_email),
                            ("api_hash", settings.g2a_api_hash.get_secret_value()),
                            ("api_secret", settings.g2a_api_secret.get_secret_value()))
        if value
    }
    run(host=host, port=port, products=products, seed=seed,
        rate_limit_per_min=rate_limit_per_min, webhook_url=webhook_url, webhook_secret=secret,
        **credentials)
