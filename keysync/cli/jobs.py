"""`keysync jobs`: broker messages (queued, delayed, dead), and `jobs retry` / `jobs discard`
for dead letters (CONTRACT §8)."""

from __future__ import annotations

from collections.abc import Callable

import click
from rich.console import Console

from keysync.cli._ops import JSON, LIMIT, cli_actor, connections, echo_json, refusals, table, when
from keysync.settings import get_settings

STATES = ("queued", "delayed", "dead")


@click.group(invoke_without_command=True)
@click.option("--state", type=click.Choice(STATES), default=None,
              help="only messages in this state (default: all)")
@click.option("--actor", default=None, help="only messages of this actor")
@LIMIT
@JSON
@click.pass_context
def jobs(ctx: click.Context, state: str | None, actor: str | None, limit: int,
         as_json: bool) -> None:
    """Broker messages, newest first (dead letters by when they died)."""
    if ctx.invoked_subcommand is not None:
        return
    from keysync.resources import make_redis
    from services.ops import jobs as ops_jobs
    from services.ops.schemas import JobState

    settings = get_settings()
    settings.require("broker_url")
    broker_redis = make_redis(settings.broker_url)
    try:
        with refusals(as_json):
            listed = ops_jobs.list_jobs(broker_redis, state=JobState(state) if state else None,
                                        actor=actor, limit=limit)
    finally:
        broker_redis.close()
    if as_json:
        echo_json(listed.dump())
        return
    table("jobs", ["message id", "queue", "actor", "args", "state", "enqueued (UTC)",
                   "retries", "failed (UTC)", "last error"],
          [(j.message_id, j.queue, j.actor, j.args, j.state.value, when(j.enqueued_at),
            j.retries, when(j.failed_at) if j.failed_at else "", j.last_error)
           for j in listed.items], listed.total)


def _repair(kind: str, ids: tuple[str, ...], all_: bool, actor: str | None,
            as_json: bool) -> None:
    from services.ops import jobs as ops_jobs

    with connections() as conn, refusals(as_json):
        action = ops_jobs.retry if kind == "retry" else ops_jobs.discard
        result = action(conn.sessions, conn.broker_redis, actor=cli_actor(), ids=ids,
                        all_=all_, actor_filter=actor)
    if as_json:
        echo_json(result.dump())
    else:
        count = result.dump()["retried" if kind == "retry" else "discarded"]
        Console().print(f"{kind}: {count} dead letter(s)")


def _dead_letters(command: Callable[..., None]) -> Callable[..., None]:
    """The selection both repairs take: ids, or --all (of --actor), and --json."""
    for option in reversed((
        click.argument("ids", nargs=-1),
        click.option("--all", "all_", is_flag=True,
                     help="every dead letter (of --actor, if given)"),
        click.option("--actor", default=None, help="only dead letters of this actor"),
        JSON,
    )):
        command = option(command)
    return command


@jobs.command()
@_dead_letters
def retry(ids: tuple[str, ...], all_: bool, actor: str | None, as_json: bool) -> None:
    """Re-enqueue dead letters by message id (or --all): one more attempt each."""
    _repair("retry", ids, all_, actor, as_json)


@jobs.command()
@_dead_letters
def discard(ids: tuple[str, ...], all_: bool, actor: str | None, as_json: bool) -> None:
    """Delete dead letters by message id (or --all) for good."""
    _repair("discard", ids, all_, actor, as_json)
