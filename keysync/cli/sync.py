"""Commands: `keysync sync [--full] [--wait] [--json] [--allow-mass-removal]` and
`keysync stock-check [--wait] [--json]`.

Without `--wait` the actor is enqueued (a worker runs it); with `--wait` the run happens in
this process, with a progress bar on stderr and a summary on stdout. Exit codes (CONTRACT
§2): 0 ok, 3 another run holds `lock:g2a:sync`, 4 finished with errors (partial, fenced
out by a newer run, or an unexpected error), 5 G2A/DB/Redis unreachable (a failed run),
2 configuration (raised as SettingsError, turned into 2 by the group). Anything but 0 also
prints one line on stderr with the run's readable reason, as stored in `sync_runs`.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from keysync.exit_codes import ExitCode
from keysync.settings import get_settings

if TYPE_CHECKING:
    from services.catalog import SyncResult

_G2A_SETTINGS = ("g2a_api_url", "g2a_email", "g2a_api_hash", "g2a_api_secret")
_LABELS = {"full": "full sync", "incremental": "incremental sync", "stock": "stock check"}
_SUMMARY_FIELDS = ("run_id", "kind", "status", "added", "updated", "unchanged", "removed",
                   "errors", "pages", "requests", "duration_s")


@click.command("sync")
@click.option("--full", is_flag=True, help="list the whole catalog and deactivate absent games")
@click.option("--wait", is_flag=True, help="run in the foreground instead of enqueueing")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--allow-mass-removal", is_flag=True,
              help="with --full: lift the removal guard (SYNC_MAX_REMOVAL_PERCENT) for this "
                   "one run; absent games are still each confirmed with G2A first")
def sync(full: bool, wait: bool, as_json: bool, allow_mass_removal: bool) -> None:
    """Catalog sync from G2A (incremental unless --full).

    A full sync deactivates only games G2A confirms it no longer lists. When more than
    SYNC_MAX_REMOVAL_PERCENT of the active games are missing from the listing it
    deactivates nothing and exits 4 (the removal guard, shown by `keysync status`);
    `--full --allow-mass-removal` lifts the guard for one run.
    """
    if allow_mass_removal and not full:
        raise click.UsageError("--allow-mass-removal needs --full (only a full sync removes)")
    _command("full" if full else "incremental", wait, as_json, allow_mass_removal)


@click.command("stock-check")
@click.option("--wait", is_flag=True, help="run in the foreground instead of enqueueing")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def stock_check(wait: bool, as_json: bool) -> None:
    """Refresh stock and prices of known games from one listing of the catalog."""
    _command("stock", wait, as_json)


def _command(kind: str, wait: bool, as_json: bool, allow_mass_removal: bool = False) -> None:
    settings = get_settings()
    # Fail here (exit 2, naming the variable) rather than queue a job that cannot run.
    settings.require("database_url", "redis_url", "broker_url", *_G2A_SETTINGS)
    if wait:
        sys.exit(_run_here(kind, as_json, allow_mass_removal))
    _enqueue(kind, as_json, allow_mass_removal)


def _enqueue(kind: str, as_json: bool, allow_mass_removal: bool) -> None:
    from jobs import catalog

    if kind == "stock":
        message = catalog.stock_check.send()
    elif allow_mass_removal:
        message = catalog.catalog_sync.send(True, allow_mass_removal=True)
    else:
        message = catalog.catalog_sync.send(kind == "full")
    if as_json:
        payload: dict[str, Any] = {"queued": True, "kind": kind, "actor": message.actor_name,
                                   "message_id": message.message_id}
        if allow_mass_removal:
            payload["allow_mass_removal"] = True
        click.echo(json.dumps(payload))
    else:
        click.echo(f"queued {message.actor_name} ({kind}): message {message.message_id}")


def _run_here(kind: str, as_json: bool, allow_mass_removal: bool) -> int:
    import redis
    from sqlalchemy.exc import InterfaceError, OperationalError

    from jobs.catalog import sync_deps
    from keysync.resources import Resources
    from services.catalog import (
        LockHeld,
        SyncResult,
        describe_error,
        record_lock_held,
        run_catalog_sync,
        run_stock_check,
    )
    from services.catalog import Progress as RunProgress
    from worker.broker import make_broker

    settings = get_settings()
    resources = Resources.build(settings, make_broker(settings), pool_size=2, name="keysync-cli")
    err = Console(stderr=True)
    bar = Progress(TextColumn(_LABELS[kind]), BarColumn(), MofNCompleteColumn(),
                   TextColumn("pages · {task.fields[products]} products"), TimeElapsedColumn(),
                   console=err, disable=as_json or not err.is_terminal, transient=True)
    try:
        with bar:
            task = bar.add_task("pages", total=None, products=0)

            def on_progress(p: RunProgress) -> None:
                bar.update(task, completed=p.pages_done, total=p.pages_total, products=p.products)

            deps = sync_deps(resources)
            try:
                if kind == "stock":
                    result = run_stock_check(deps, on_progress=on_progress)
                else:
                    result = run_catalog_sync(deps, full=kind == "full",
                                              allow_mass_removal=allow_mass_removal,
                                              on_progress=on_progress)
            except LockHeld as held:
                locked = record_lock_held(deps, held)
                return _report(kind, locked, as_json, ExitCode.LOCKED, status="locked")
            except (OperationalError, InterfaceError, redis.RedisError):
                raise  # the group says which dependency is unreachable (exit 5)
            except Exception as exc:
                # Logged (with its traceback when it is a bug) and recorded by the run; the
                # operator gets one line, exit 4 (finished with errors).
                crashed = SyncResult(run_id=None, kind=kind, status="failed",
                                     error_detail=describe_error(exc))
                return _report(kind, crashed, as_json, ExitCode.PARTIAL)
    finally:
        resources.close()
    if result.status == "succeeded":
        code = ExitCode.OK
    elif result.status == "partial" or result.fenced_out:
        # Fenced out: a newer run took over and wrote; this one finished with errors.
        code = ExitCode.PARTIAL
    else:
        code = ExitCode.UNREACHABLE  # failed: nothing G2A answered
    return _report(kind, result, as_json, code)


def _report(kind: str, result: SyncResult, as_json: bool, code: ExitCode,
            *, status: str | None = None) -> int:
    """The summary (table, or one JSON object) on stdout; for anything but success one
    line on stderr, however long the reason (never wrapped, never a traceback)."""
    payload: dict[str, Any] = result.as_dict()
    if status is not None:
        payload["status"] = status
    if as_json:
        click.echo(json.dumps(payload, default=str))
    elif payload["run_id"] is not None and code != ExitCode.LOCKED:
        _summary(payload)
    if code != ExitCode.OK:
        reason = " ".join(str(result.error_detail or payload["status"]).split())
        run = f" (sync run {payload['run_id']})" if payload["run_id"] else ""
        click.echo(f"error: {_LABELS[kind]} {payload['status']}: {reason}{run}", err=True)
    return int(code)


def _summary(payload: dict[str, Any]) -> None:
    table = Table(title=f"{_LABELS[str(payload['kind'])]}: {payload['status']}",
                  show_header=False)
    table.add_column("field")
    table.add_column("value", justify="right")
    names: tuple[str, ...] = _SUMMARY_FIELDS
    if payload["kind"] == "full":
        names += ("removal_candidates", "still_listed", "removal_guard")
    for name in names:
        table.add_row(name, str(payload[name]))
    Console().print(table)
