"""What the operations commands (`jobs`, `webhooks`, `orders`, `outbox`) share: the actor
they act as, their connections, refusals as exit 2, output as one JSON object or a table."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from keysync.exit_codes import ExitCode
from keysync.settings import get_settings
from services.ops.errors import MAX_LIMIT

if TYPE_CHECKING:  # `keysync --help` should not pay for SQLAlchemy and redis
    import redis
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

LIMIT = click.option("--limit", default=50, show_default=True, type=click.IntRange(1, MAX_LIMIT),
                     help="at most this many items")
JSON = click.option("--json", "as_json", is_flag=True, help="print one JSON object")


def cli_actor() -> str:
    """Who the audit trail names for a CLI action: `cli:<os user>`."""
    return f"cli:{getpass.getuser()}"


@dataclass
class Connections:
    engine: Engine
    sessions: sessionmaker[Session]
    broker_redis: redis.Redis


@contextmanager
def connections() -> Iterator[Connections]:
    """Postgres (a small pool) and the broker's Redis, closed afterwards."""
    from db.session import make_engine, make_session_factory
    from keysync.resources import make_redis

    settings = get_settings()
    settings.require("database_url", "broker_url")
    # Two connections: the after-commit send of an enqueued job takes a second one.
    engine = make_engine(settings.database_url, pool_size=2, application_name="keysync-cli")
    broker_redis = make_redis(settings.broker_url)
    try:
        yield Connections(engine, make_session_factory(engine), broker_redis)
    finally:
        engine.dispose()
        broker_redis.close()


@contextmanager
def refusals(as_json: bool) -> Iterator[None]:
    """A service's refusal (bad input, unknown ids) is a usage error: exit 2 with its
    message (and `{"error": …}` on stdout with --json); nothing was changed."""
    from services.errors import DomainError

    try:
        yield
    except DomainError as exc:
        if as_json:
            click.echo(json.dumps({"error": exc.message}))
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(ExitCode.CONFIG)


def echo_json(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data))


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]],
          total: int) -> None:
    """A rich table for people, with how many there are beyond the page."""
    grid = Table(title=title)
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*("" if cell is None else str(cell) for cell in row))
    console = Console()
    console.print(grid)
    console.print(f"{len(rows)} shown of {total}")


def when(value: object) -> str:
    """A timestamp for a table: to the second, UTC."""
    text = value.isoformat() if hasattr(value, "isoformat") else str(value or "")
    return text[:19].replace("T", " ")
