"""Commands: `keysync sync [--full] [--wait] [--json] [--allow-mass-removal]` and
`keysync stock-check [--wait] [--json]`.

Without `--wait` the actor is enqueued (a worker runs it); with `--wait` the run happens in
this process, with a progress bar on stderr and a summary on stdout. Exit codes: 0 ok,
3 another run holds `lock:g2a:sync`, 4 partial, 5 G2A/DB/Redis unreachable (a failed run),
2 configuration (raised as SettingsError, turned into 2 by the group).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from keysync.exit_codes import ExitCode
from keysync.settings import get_settings

_G2A_SETTINGS = ("g2a_api_url", "g2a_email", "g2a_api_hash", "g2a_api_secret")
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
    from jobs.catalog import sync_deps
    from keysync.resources import Resources
    from services.catalog import LockHeld, run_catalog_sync, run_stock_check
    from services.catalog import Progress as RunProgress
    from worker.broker import make_broker

    settings = get_settings()
    resources = Resources.build(settings, make_broker(settings), pool_size=2, name="keysync-cli")
    err = Console(stderr=True)
    bar = Progress(TextColumn(f"{kind} sync"), BarColumn(), MofNCompleteColumn(),
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
                return _locked(kind, held.holder, as_json, err)
    finally:
        resources.close()
    payload = result.as_dict()
    code = {"succeeded": ExitCode.OK, "partial": ExitCode.PARTIAL}.get(
        result.status, ExitCode.UNREACHABLE
    )
    if as_json:
        click.echo(json.dumps(payload, default=str))
    else:
        _summary(payload)
    if code != ExitCode.OK:
        err.print(f"[red]{kind} sync {result.status}[/]: {result.error_detail or ''}")
    return code


def _locked(kind: str, holder: str | None, as_json: bool, err: Console) -> int:
    if as_json:
        click.echo(json.dumps({"run_id": None, "kind": kind, "status": "locked",
                               "error": "another sync holds lock:g2a:sync"}))
    err.print(f"[yellow]another sync or stock check holds lock:g2a:sync[/] (holder {holder})")
    return ExitCode.LOCKED


def _summary(payload: dict[str, Any]) -> None:
    table = Table(title=f"{payload['kind']} sync: {payload['status']}", show_header=False)
    table.add_column("field")
    table.add_column("value", justify="right")
    names: tuple[str, ...] = _SUMMARY_FIELDS
    if payload["kind"] == "full":
        names += ("removal_candidates", "still_listed", "removal_guard")
    for name in names:
        table.add_row(name, str(payload[name]))
    Console().print(table)
