"""`keysync db upgrade`: the schema."""

from __future__ import annotations

import click

from keysync.settings import get_settings


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Alembic migrations to head (idempotent; concurrent runs serialise)."""
    from db.migrate import upgrade

    settings = get_settings()
    settings.require("database_url")
    upgrade(settings.database_url)
    click.echo("database at head")
