"""`keysync orders [--status S] [--stuck]`: orders, and why the stuck ones are (CONTRACT §8)."""

from __future__ import annotations

import click

from keysync.cli._ops import JSON, LIMIT, connections, echo_json, refusals, table, when
from keysync.settings import get_settings

STATUSES = ("PENDING", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED")


@click.command()
@click.option("--status", type=click.Choice(STATUSES, case_sensitive=False), default=None,
              help="only orders in this status")
@click.option("--stuck", is_flag=True,
              help="only orders not terminal for longer than ORDER_STUCK_AFTER_S, with why")
@LIMIT
@JSON
def orders(status: str | None, stuck: bool, limit: int, as_json: bool) -> None:
    """Orders, newest first; with --stuck, longest stuck first with the reason."""
    from db.models import OrderStatus
    from services.ops.stuck_orders import list_orders

    settings = get_settings()
    with connections() as conn, refusals(as_json), conn.sessions() as session:
        listed = list_orders(
            session, status=OrderStatus(status.upper()) if status else None, stuck=stuck,
            stuck_after_s=settings.order_stuck_after_s, limit=limit,
            broker_redis=conn.broker_redis,
        )
    if as_json:
        echo_json(listed.dump())
        return
    columns = ["id", "user", "status", "total", "created (UTC)", "updated (UTC)"]
    if stuck:
        columns += ["stuck for", "reason"]
    rows = []
    for o in listed.items:
        row: list[object] = [o.id, o.user_email, o.status.value, o.total, when(o.created_at),
                             when(o.updated_at)]
        if stuck:
            row += [f"{o.stuck_for_s} s", o.reason]
        rows.append(row)
    table("stuck orders" if stuck else "orders", columns, rows, listed.total)
