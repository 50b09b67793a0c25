"""`keysync up`: the whole system on one machine (the dev stack, `keysync.devstack`)."""

from __future__ import annotations

import sys

import click

from keysync.settings import get_settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="web listen address")
@click.option("--port", default=8000, show_default=True, help="web port")
@click.option("--sim-products", default=1000, show_default=True, help="simulator catalog size")
@click.option("--skip-initial-sync", is_flag=True, help="do not sync before starting web")
def up(host: str, port: int, sim_products: int, skip_initial_sync: bool) -> None:
    """Everything on one machine: embedded Postgres/Redis and G2A simulator when not
    configured, migrations, a first sync, then web + worker + scheduler. Ctrl-C stops all.
    """
    from keysync.devstack.supervisor import UpOptions, run

    options = UpOptions(host, port, sim_products, skip_initial_sync)
    sys.exit(run(get_settings(), options))
