"""`keysync status [--json]`: the checks of `services.ops.status`, as JSON or as tables."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from keysync.exit_codes import ExitCode
from keysync.settings import get_settings
from services.ops.display import number_text

# The report is the JSON document `--json` prints (its shape is fixed, sections may be
# null), so the renderer reads it as JSON rather than as typed objects.
Report = dict[str, Any]

_STATE_STYLE = {"ok": "green", "warn": "yellow", "critical": "bold red"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object on stdout")
def status(as_json: bool) -> None:
    """Checks of every part (DB, Redis, broker, workers, queues, dead letters, syncs, removal
    guard, outboxes, webhooks, stuck orders, G2A funds, scheduler) and the details behind them.

    Exit 0 when no check is critical (warnings included), 1 when any is (a dependency down
    counts), 2 on configuration errors. `--json` always prints one object, with whatever
    could be read, even with Postgres or Redis down.
    """
    from db.session import make_engine, make_session_factory
    from keysync.resources import make_redis
    from services.ops.status import StatusSources, Thresholds, collect

    settings = get_settings()
    settings.require("database_url", "redis_url", "broker_url")
    engine = make_engine(settings.database_url, pool_size=1, application_name="keysync-status")
    sources = StatusSources(
        engine=engine,
        sessions=make_session_factory(engine),
        cache_redis=make_redis(settings.redis_url),
        broker_redis=make_redis(settings.broker_url),
    )
    thresholds = Thresholds(order_stuck_after_s=settings.order_stuck_after_s)
    try:
        report = collect(sources, thresholds=thresholds)
    finally:
        engine.dispose()
        sources.cache_redis.close()
        sources.broker_redis.close()
    if as_json:
        click.echo(json.dumps(report, default=str))
    else:
        # Details carry `host:pid:…` and brackets: never read them as emoji codes or markup.
        render(report, Console(emoji=False, markup=False, highlight=False))
    sys.exit(ExitCode.OK if report["ok"] else 1)


def render(report: Report, console: Console) -> None:
    """The report for a human: the checks first, then one table per section, `overall` last.
    Numbers sit in columns that never wrap, so a narrow terminal cuts text, not digits."""
    _checks(report, console)
    _dependencies(report, console)
    _queues(report, console)
    _workers(report, console)
    _sync(report, console)
    _backlogs(report, console)
    _scheduler(report, console)
    counts = {s: sum(c["state"] == s for c in report["checks"]) for s in ("critical", "warn")}
    overall = report["overall"]
    console.print(Text.assemble(
        "overall: ", (overall.upper(), _STATE_STYLE[overall]),
        f" ({counts['critical']} critical, {counts['warn']} warn)"))


def _table(title: str, *columns: str, numeric: tuple[str, ...] = ()) -> Table:
    """Few columns, so that even an 60-column terminal fits them: wide sections are laid
    out one record per column (e.g. the sync kinds), not one per row."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        if column in numeric:
            table.add_column(column, justify="right", no_wrap=True)
        else:
            table.add_column(column)
    return table


def _row(table: Table, *cells: str | Text) -> None:
    """Cells as plain text: a value is never read as markup or an emoji code."""
    table.add_row(*(c if isinstance(c, Text) else Text(c) for c in cells))


def _checks(report: Report, console: Console) -> None:
    table = _table("checks", "check", "state", "detail")
    table.columns[0].no_wrap = True
    table.columns[1].no_wrap = True
    for check in report["checks"]:
        state = check["state"]
        _row(table, check["name"], Text(state, style=_STATE_STYLE[state]), check["detail"])
    console.print(table)


def _dependencies(report: Report, console: Console) -> None:
    table = _table("dependencies", "dependency", "state", "latency ms", "error",
                   numeric=("latency ms",))
    for name in ("database", "redis", "broker"):
        probe = report[name]
        state = Text("ok", "green") if probe["ok"] else Text("DOWN", "bold red")
        _row(table, name, state, number_text(probe["latency_ms"]), probe["error"] or "")
    console.print(table)


def _queues(report: Report, console: Console) -> None:
    if report["queues"] is not None:
        names = list(report["queues"])
        table = _table("queues", "messages", *names, numeric=tuple(names))
        for label, key in (("ready", "ready"), ("delayed", "delayed"),
                           ("in progress", "in_progress"), ("dead", "dead"),
                           ("oldest ready s", "oldest_ready_s")):
            _row(table, label, *(number_text(report["queues"][q][key]) for q in names))
        console.print(table)
    if report["dead_letters"]:
        table = _table("dead letters", "actor", "jobs", numeric=("jobs",))
        for actor, count in sorted(report["dead_letters"].items()):
            _row(table, actor, number_text(count))
        console.print(table)


def _workers(report: Report, console: Console) -> None:
    if not report["workers"]:
        return
    table = _table("worker processes", "worker", "started (UTC)", "last beat s", "state",
                   numeric=("last beat s", "started (UTC)"))
    for beat in report["workers"]:
        started = (beat["started_at"] or "")[:16].replace("T", " ")
        _row(table, beat["id"], started, number_text(beat["last_beat_s"]),
                      "stopped" if beat["stopped"] else "running")
    console.print(table)


def _sync(report: Report, console: Console) -> None:
    from services.ops.checks import human_s

    lock = report["sync_lock"]
    if lock is not None:
        table = _table("sync lock", "field", "value")
        table.columns[1].overflow = "fold"  # a run id folds rather than losing its end
        _row(table, "holder", lock["holder"] or "free (nobody holds it)")
        if lock["held"]:
            _row(table, "run", lock["run_id"] or "-")
            _row(table, "ms left", number_text(lock["ttl_ms"]))
        _row(table, "fence", number_text(lock["fence"]))
        for key, value in lock["progress"].items():
            if key != "run_id" or value != lock["run_id"]:
                _row(table, f"progress {key}", number_text(value))
        console.print(table)
    if report["last_runs"] is not None:
        runs = report["last_runs"]
        kinds = list(runs)
        table = _table("last runs", "", *kinds, numeric=tuple(kinds))
        table.columns[0].no_wrap = True
        checked = datetime.fromisoformat(report["checked_at"])
        _row(table, "status", *(run["status"] if run else "never" for run in runs.values()))
        _row(table, "started", *(
            f"{human_s((checked - datetime.fromisoformat(run['started_at'])).total_seconds())}"
            " ago" if run else "-" for run in runs.values()))
        for field in ("duration_s", "added", "updated", "unchanged", "removed", "errors",
                      "pages", "requests"):
            _row(table, field.replace("_s", " s"),
                 *(number_text(run[field]) if run else "-" for run in runs.values()))
        console.print(table)
    guard = report["removal_guard"]
    if guard and guard["active"]:
        console.print(Text.assemble(("removal guard active", "bold red"),
                                    f" since {guard['since']}: {guard['detail']}"))


def _backlogs(report: Report, console: Console) -> None:
    table = _table("backlogs", "what", "count", "oldest s", numeric=("count", "oldest s"))
    cache, jobs = report["cache"], report["job_outbox"]
    _row(table, "cache outbox", number_text(cache["outbox_pending"]),
         number_text(cache["outbox_oldest_s"]))
    _row(table, "job outbox", number_text(jobs["pending"]), number_text(jobs["oldest_s"]))
    hooks = report["webhook_events"]
    if hooks is not None:
        for outcome, count in hooks["by_outcome"].items():
            oldest = hooks["oldest_pending_s"] if outcome == "pending" else None
            _row(table, f"webhooks {outcome}", number_text(count), number_text(oldest))
    stuck = report["stuck_orders"]
    if stuck is not None:
        _row(table, "stuck orders", number_text(stuck["count"]), number_text(stuck["oldest_s"]))
    console.print(table)


def _scheduler(report: Report, console: Console) -> None:
    sched = report["scheduler"]
    if sched is None:
        return
    leader = sched["leader"] or "none"
    table = _table(f"scheduler (leader {leader}; running: {', '.join(sched['schedulers'])})",
                   "job", "next fire (UTC)")
    for name, job in sched["jobs"].items():
        _row(table, name, str(job["next_fire"] or "")[:19].replace("T", " "))
    console.print(table)
