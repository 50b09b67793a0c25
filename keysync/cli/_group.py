"""The `keysync` click group: configuration and connectivity failures become exit codes.

Exit codes (CONTRACT §2, `keysync.exit_codes`): 0 success; 2 usage/config error naming the
variable; 3 another sync holds the lock; 4 finished with errors (partial); 5 a dependency
is unreachable.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from keysync.exit_codes import ExitCode
from keysync.settings import SettingsError, get_settings


class KeysyncGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        # Imported here: `keysync --help` should not pay for SQLAlchemy and redis.
        import redis
        from sqlalchemy.exc import OperationalError

        try:
            return super().invoke(ctx)
        except SettingsError as exc:
            click.echo(f"error: configuration: {exc.variable} {exc.problem}", err=True)
            sys.exit(ExitCode.CONFIG)
        except (OperationalError, redis.ConnectionError, redis.TimeoutError) as exc:
            what = "PostgreSQL" if isinstance(exc, OperationalError) else "Redis"
            click.echo(f"error: {what} unreachable: {str(exc).splitlines()[0]}", err=True)
            sys.exit(ExitCode.UNREACHABLE)


@click.group(cls=KeysyncGroup)
def main() -> None:
    """keysync: G2A catalog sync, orders, webhooks and cache for the game-key shop."""
    from keysync.logging import configure_logging

    # A SettingsError here is the group's to report: this callback runs inside invoke().
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
