"""`keysync status [--json]`: the report of `services.ops.status`, as JSON or as tables."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from keysync.exit_codes import ExitCode
from keysync.settings import get_settings

# The report is the JSON document `--json` prints (its shape is fixed, sections may be
# null), so the renderer reads it as JSON rather than as typed objects.
Report = dict[str, Any]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
def status(as_json: bool) -> None:
    """Health and backlog of every part: DB, Redis, broker, cache, queues, syncs, scheduler.

    Exit 0 whenever a report could be made, even one saying dependencies are down (read
    `ok` and each `*.ok`); 5 only when none of Postgres, Redis and the broker answered,
    so nothing beyond "unreachable" could be reported; 2 on configuration errors.
    """
    from db.session import make_engine, make_session_factory
    from keysync.resources import make_redis
    from services.ops.status import StatusSources, collect

    settings = get_settings()
    settings.require("database_url", "redis_url", "broker_url")
    engine = make_engine(settings.database_url, pool_size=1, application_name="keysync-status")
    sources = StatusSources(
        engine=engine,
        sessions=make_session_factory(engine),
        cache_redis=make_redis(settings.redis_url),
        broker_redis=make_redis(settings.broker_url),
    )
    try:
        report = collect(sources)
    finally:
        engine.dispose()
        sources.cache_redis.close()
        sources.broker_redis.close()
    if as_json:
        click.echo(json.dumps(report, default=str))
    else:
        render(report, Console())
    nothing_answered = not any(report[n]["ok"] for n in ("database", "redis", "broker"))
    sys.exit(ExitCode.UNREACHABLE if nothing_answered else ExitCode.OK)


def render(report: Report, console: Console) -> None:
    """The report for a human: one table or line per section, `overall` last."""
    _dependencies(report, console)
    cache = report["cache"]
    console.print(
        f"cache: {'[yellow]degraded[/]' if cache['degraded'] else '[green]healthy[/]'}, "
        f"outbox pending {cache['outbox_pending']}; "
        f"job outbox pending {report['job_outbox']['pending']}"
    )
    _queues(report, console)
    if report["sync_lock"] is not None:
        lock = report["sync_lock"]
        held = f"held by {lock['holder']}… ({lock['ttl_ms']} ms left)" if lock["held"] else "free"
        console.print(f"sync lock: {held}; fence {lock['fence']}; progress {lock['progress']}")
    _last_runs(report, console)
    guard = report.get("removal_guard")
    if guard and guard["active"]:
        console.print(f"[red]removal guard active[/] since {guard['since']}: {guard['detail']}")
    if report["webhook_events"] is not None:
        console.print(f"webhook events: {report['webhook_events']}")
    _scheduler(report, console)
    overall = "[green]OK[/]" if report["ok"] else "[red]NOT OK[/]"
    console.print(f"overall: {overall}")


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    return table


def _dependencies(report: Report, console: Console) -> None:
    health = _table("dependencies", "", "state", "latency ms", "error")
    for name in ("database", "redis", "broker"):
        probe = report[name]
        state = "[green]ok[/]" if probe["ok"] else "[red]DOWN[/]"
        health.add_row(name, state, str(probe["latency_ms"] or ""), probe["error"] or "")
    console.print(health)


def _queues(report: Report, console: Console) -> None:
    if report["queues"] is None:
        return
    queues = _table("queues", "queue", "ready", "delayed", "in progress", "dead")
    for name, q in report["queues"].items():
        queues.add_row(
            name, *(str(q[k]) for k in ("ready", "delayed", "in_progress", "dead"))
        )
    console.print(queues)
    if report["dead_letters"]:
        console.print(f"dead letters by actor: {report['dead_letters']}")


def _last_runs(report: Report, console: Console) -> None:
    if report["last_runs"] is None:
        return
    runs = _table(
        "last runs (added / updated / unchanged / removed / errors)",
        "kind", "status", "started (UTC)", "seconds", "counts",
    )
    for kind, run in report["last_runs"].items():
        if run is None:
            runs.add_row(kind, "never", "", "", "")
            continue
        counts = " / ".join(
            str(run[k]) for k in ("added", "updated", "unchanged", "removed", "errors")
        )
        started = run["started_at"][:19].replace("T", " ")
        runs.add_row(kind, run["status"], started, str(run["duration_s"]), counts)
    console.print(runs)


def _scheduler(report: Report, console: Console) -> None:
    sched = report["scheduler"]
    if sched is None:
        return
    console.print(
        f"scheduler: leader {sched['leader'] or '[red]none[/]'}, "
        f"running {len(sched['schedulers'])}: {', '.join(sched['schedulers'])}"
    )
    for name, job in sched["jobs"].items():
        console.print(f"  {name:<22} next {job['next_fire']}")
