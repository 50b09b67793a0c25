"""`keysync check`: run the invariant checker against the configured database."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.table import Table

from keysync.cli import main
from keysync.settings import get_settings


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--g2a-paid", type=int, default=None,
              help="paid order count on the G2A side (e.g. the simulator's stats) to cross-check")
def check(as_json: bool, g2a_paid: int | None) -> None:
    """Check the money and delivery invariants; exit 1 when any is violated."""
    from db.session import make_engine, make_session_factory
    from services.invariants import check as run_checks

    settings = get_settings()
    settings.require("database_url")
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with make_session_factory(engine)() as session:
            report = run_checks(session, paid_g2a_orders=g2a_paid)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        table = Table(title="keysync invariants")
        table.add_column("check")
        table.add_column("result")
        for name in report.checked:
            bad = report.violations.get(name) or []
            table.add_row(name, "[green]ok[/]" if not bad else f"[red]{len(bad)} violation(s)[/]")
        Console().print(table)
    sys.exit(0 if report.ok else 1)
