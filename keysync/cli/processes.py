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

    # log_config=None: uvicorn installs no handlers of its own, its lines go through ours.
    # uvloop and httptools (uvicorn[standard]): the webhook intake is bound by this one
    # process's interpreter, and the C loop and parser take a third off each request's cost.
    uvicorn.run("keysync.cli.processes:web_app", factory=True, host=host, port=port,
                workers=workers, log_config=None, access_log=False, loop="uvloop",
                http="httptools")


def web_app() -> Any:
    """uvicorn's app factory, called in each of its processes: with `--workers` above 1 they
    are spawned afresh and would start without our logging configuration."""
    from keysync.logging import configure_logging
    from web.app import create_app

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    return create_app()


# The longest an idle worker takes to see a new message (`dramatiq_worker_timeout`).
IDLE_POLL_MS = 100


@click.command()
@click.option("--processes", type=click.IntRange(min=1), default=lambda: os.cpu_count() or 1,
              show_default=f"one per core, {os.cpu_count() or 1} here",
              help="worker processes (each has its own interpreter lock)")
@click.option("--threads", type=click.IntRange(min=1), default=4, show_default=True,
              help="threads per process (they overlap Postgres/Redis/G2A waits)")
def worker(processes: int, threads: int) -> None:
    """Dramatiq worker for every actor of `jobs`: one process per core by default, since a
    process runs Python on one core at a time and jobs spend most of their CPU in Python."""
    settings = get_settings()
    settings.require_secrets()
    settings.require("database_url", "redis_url", "broker_url")
    # Read by dramatiq when it is imported: an idle queue's consumer polls Redis again within
    # this long (dramatiq's default, 1 s, is what a login's guest migration waited on an
    # idle worker). A poll is one cheap script call per queue and process.
    os.environ.setdefault("dramatiq_worker_timeout", str(IDLE_POLL_MS))
    from dramatiq.cli import main as dramatiq_main
    from dramatiq.cli import make_argument_parser

    # dramatiq's own main, in this process (not an exec): its parent process keeps the
    # logging this command configured, and each worker process configures ours again as
    # it boots (`worker._logging`). `--skip-logging`: no `basicConfig` of dramatiq's anywhere.
    args = make_argument_parser().parse_args(  # type: ignore[no-untyped-call]
        ["jobs", "--processes", str(processes), "--threads", str(threads), "--skip-logging"])
    sys.exit(dramatiq_main(args))  # type: ignore[no-untyped-call]


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
    Credentials it accepts (the one `Authorization` header the Export API expects,
    `{hash}, sha256_hex(hash + email + secret)`): G2A_EMAIL, G2A_API_HASH and
    G2A_API_SECRET when set (so keysync and the simulator agree), otherwise its own
    email `sim@keysync.local`, hash `sim-api-hash`, secret `sim-api-secret`.
    Anything else is 401 AUTH02. Webhooks (--webhook-url) are signed with
    --webhook-secret / G2A_SIM_WEBHOOK_SECRET, else the first of WEBHOOK_SECRETS.

    \b
    Test controls under /_sim (JSON bodies, no auth; docs/operations.md):
      POST   /_sim/faults  add a fault; answers {ok, id}. Faults stack: each stays
             until its count is used up or it is removed; a request meets them in
             the order they were added and the first that fires answers it.
               rate          0..1, chance an eligible request is hit (default 1)
               status        HTTP status to answer (G2A error body); 0 = malformed
                             JSON with 200; 429 adds Retry-After; none = latency only
               latency_ms    delay before answering
               count         hits before the fault removes itself (default: never)
               skip          eligible requests let through first
               paths         only requests whose path starts with this (/v1/order)
               only          "listing" (/v1/products without id) or "lookup" (?id=)
               empty_listing listings answer 200 {total: 0, docs: []}
      GET    /_sim/faults  the active faults, {faults: [{id, ...remaining count/skip}]}
      DELETE /_sim/faults  remove every fault;  DELETE /_sim/faults/{id}  remove one
      POST   /_sim/drift   {after, remove_id?}: after N listing requests remove a
             product from page 1 and add one at the end (total unchanged), once
      DELETE /_sim/drift   disarm it
      POST   /_sim/mutate  {changed, added, removed, out_of_stock}: change products and
             bump their updated_at; answers the ids of each
      POST   /_sim/config  {rate_limit_per_min (0 = unlimited), key_delay_s (seconds
             a paid order's key answers ORD03 first), funds (EUR in the account;
             an order above it is 403 ORD112)}; unknown fields are 400
      GET    /_sim/stats   requests (and by path), rate_limited, faults_injected,
             listing_requests, lookups, orders_created, orders_paid, payments,
             keys_issued, key_requests_rejected, drift, products, funds,
             webhooks_delivered
      POST   /_sim/reset   zero the stats
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
