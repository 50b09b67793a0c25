"""The `keysync` console script: one click group, commands grouped by topic in sibling modules.

Exit codes (CONTRACT §2): 0 success; 2 usage/config error naming the variable; 3 another
sync holds the lock; 4 finished with errors (partial); 5 a dependency is unreachable.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from keysync.settings import SettingsError, get_settings

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_LOCKED = 3
EXIT_PARTIAL = 4
EXIT_UNREACHABLE = 5


class DependencyUnreachable(click.ClickException):
    exit_code = EXIT_UNREACHABLE


class KeysyncGroup(click.Group):
    """Turns configuration and connectivity failures into the documented exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        import redis
        from sqlalchemy.exc import OperationalError

        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            click.echo(f"error: configuration: {exc.variable} {exc.problem}", err=True)
            sys.exit(EXIT_CONFIG)
        except (OperationalError, redis.ConnectionError, redis.TimeoutError) as exc:
            what = "PostgreSQL" if isinstance(exc, OperationalError) else "Redis"
            click.echo(f"error: {what} unreachable: {str(exc).splitlines()[0]}", err=True)
            sys.exit(EXIT_UNREACHABLE)


@click.group(cls=KeysyncGroup)
def main() -> None:
    """keysync: G2A catalog sync, orders, webhooks and cache for the game-key shop."""
    from keysync.logging import configure_logging

    try:
        settings = get_settings()
        configure_logging(settings.log_format, settings.log_level)
    except SettingsError as exc:
        click.echo(f"error: configuration: {exc.variable} {exc.problem}", err=True)
        sys.exit(EXIT_CONFIG)


from keysync.cli import check, ops, processes, sync, users  # noqa: E402  (commands register on import)

__all__ = ["check", "main", "ops", "processes", "sync", "users"]
