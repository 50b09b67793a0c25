"""`keysync check`: run the invariant checker against the configured database (and cache)."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.table import Table

from keysync.settings import get_settings


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--g2a-paid", type=int, default=None,
              help="paid order count on the G2A side (e.g. the simulator's stats) to cross-check")
@click.option("--no-cache", is_flag=True,
              help="skip comparing cached games, carts, wishlists and orders with Postgres")
def check(as_json: bool, g2a_paid: int | None, no_cache: bool) -> None:
    """Check the money, delivery and cache invariants; exit 1 when any is violated.

    Also lists the units paid at G2A whose key we do not hold although their order is
    final (key lost at G2A, alerted; or still being fetched), which are not violations, and
    sums the refunds: whole orders, and undelivered units of partially delivered orders
    (each must equal those units' price: `completed_orders_delivered_or_refunded`).
    """
    from db.session import make_engine, make_session_factory
    from keysync.resources import make_redis
    from services.ops.invariants import check as run_checks

    settings = get_settings()
    settings.require("database_url")
    cache_redis = None if no_cache or not settings.redis_url else make_redis(settings.redis_url)
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with make_session_factory(engine)() as session:
            report = run_checks(session, paid_g2a_orders=g2a_paid, cache_redis=cache_redis)
    finally:
        engine.dispose()
        if cache_redis is not None:
            cache_redis.close()
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        table = Table(title="keysync invariants")
        table.add_column("check")
        table.add_column("result")
        for name in report.checked:
            bad = report.violations.get(name) or []
            table.add_row(name, "[green]ok[/]" if not bad else f"[red]{len(bad)} violation(s)[/]")
        for name, reason in report.skipped.items():
            table.add_row(name, f"[yellow]skipped[/] ({reason})")
        console = Console()
        console.print(table)
        paid = report.g2a_paid
        console.print(
            f"paid at G2A: {paid.get('total', 0)} = delivered {paid.get('delivered', 0)}"
            f" + kept for support {paid.get('kept_for_support', 0)}"
            f" + awaiting key {paid.get('awaiting_key', 0)} + key lost {paid.get('key_lost', 0)}"
        )
        refunds = report.refunds
        console.print(
            f"refunded: {refunds.get('whole_orders', 0)} failed/cancelled orders"
            f" ({refunds.get('whole_orders_amount', 0)}) + undelivered units of"
            f" {refunds.get('partial_deliveries', 0)} partially delivered orders"
            f" ({refunds.get('undelivered_units_amount', 0)})"
        )
        if report.paid_keys_not_fetched:
            # Paid at G2A, order final, key not held: key_lost units need G2A support
            # (alert raised); awaiting_key ones are still being fetched (a violation once
            # past the grace).
            units = Table(title="paid at G2A, key not fetched")
            for column in ("order", "status", "item", "unit", "g2a_order_id", "state"):
                units.add_column(column)
            for unit in report.paid_keys_not_fetched:
                units.add_row(unit["order_id"], unit["order_status"], unit["order_item_id"],
                              unit["unit_index"], unit["g2a_order_id"] or "-", unit["state"])
            console.print(units)
    # 1, not a CONTRACT §2 code: the check ran and found violations.
    sys.exit(0 if report.ok else 1)
