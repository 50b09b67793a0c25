"""`keysync webhooks`: the webhook inbox by outcome, and `webhooks replay` (CONTRACT §8)."""

from __future__ import annotations

import click
from rich.console import Console

from keysync.cli._ops import JSON, LIMIT, cli_actor, connections, echo_json, refusals, table, when
from keysync.settings import get_settings

OUTCOMES = ("pending", "processed", "ignored", "orphan", "dead")


@click.group(invoke_without_command=True)
@click.option("--outcome", type=click.Choice(OUTCOMES), default=None,
              help="only events with this outcome (pending = not processed yet)")
@LIMIT
@JSON
@click.pass_context
def webhooks(ctx: click.Context, outcome: str | None, limit: int, as_json: bool) -> None:
    """Stored webhook events, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    from services.ops.schemas import InboxOutcome
    from services.ops.webhook_inbox import list_events

    with connections() as conn, refusals(as_json), conn.sessions() as session:
        listed = list_events(session, outcome=InboxOutcome(outcome) if outcome else None,
                             limit=limit)
    if as_json:
        echo_json(listed.dump())
        return
    table("webhook events", ["event id", "type", "order", "G2A order", "status",
                             "received (UTC)", "processed (UTC)", "outcome", "attempts",
                             "last error"],
          [(e.event_id, e.type, e.order_id, e.external_order_id, e.status,
            when(e.received_at), when(e.processed_at) if e.processed_at else "",
            e.outcome.value, e.attempts, e.last_error) for e in listed.items], listed.total)


@webhooks.command()
@click.argument("event_ids", nargs=-1)
@click.option("--dead", is_flag=True, help="every dead event")
@JSON
def replay(event_ids: tuple[str, ...], dead: bool, as_json: bool) -> None:
    """Reset unprocessed events and process them again (processed ones are left alone)."""
    from services.ops.webhook_inbox import replay as replay_events
    from worker.broker import make_broker

    broker = make_broker(get_settings())
    try:
        with connections() as conn, refusals(as_json):
            result = replay_events(conn.sessions, broker, actor=cli_actor(),
                                   event_ids=event_ids, dead=dead)
    finally:
        broker.close()
    if as_json:
        echo_json(result.dump())
    else:
        Console().print(f"replayed: {result.replayed} event(s) queued for processing")
