"""`keysync outbox relay`: send the job outbox and replay cache invalidations now."""

from __future__ import annotations

import sys

import click
from rich.console import Console

from keysync.cli._ops import JSON, cli_actor, echo_json, refusals
from keysync.exit_codes import ExitCode
from keysync.settings import get_settings


@click.group()
def outbox() -> None:
    """The job outbox and the cache-invalidation outbox."""


@outbox.command()
@JSON
def relay(as_json: bool) -> None:
    """Send pending jobs and apply pending cache invalidations now (both are otherwise
    swept every minute / every 10 s). Exit 5 when the broker or the cache's Redis is down."""
    from keysync.resources import Resources
    from services.cache import CacheUnavailable
    from services.ops.outbox import relay_now
    from worker.broker import make_broker

    settings = get_settings()
    broker = make_broker(settings)
    resources = Resources.build(settings, broker, pool_size=2, name="keysync-cli")
    try:
        with refusals(as_json):
            result = relay_now(resources.sessions, broker, resources.cache, actor=cli_actor())
    except CacheUnavailable as exc:
        click.echo(f"error: Redis (cache) unreachable: {exc}", err=True)
        sys.exit(ExitCode.UNREACHABLE)
    finally:
        resources.close()
        broker.close()
    if as_json:
        echo_json(result.dump())
    else:
        Console().print(f"jobs sent: {result.jobs_sent}; "
                        f"cache invalidations applied: {result.invalidations_applied}")
