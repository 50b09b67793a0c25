"""Commands: `keysync user create [--admin]`, `keysync user top-up` and `keysync user admin`
(admin helpers; `--admin` and `user admin` grant the operations console, audited).

The service validates every input (`services.accounts.validation`); its refusals, a taken
email, an unknown user or bad input, are usage errors here: exit 2 with its message.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import click
from rich.console import Console

from keysync.exit_codes import ExitCode
from keysync.settings import get_settings


@click.group()
def user() -> None:
    """Create users and credit balances (a top-up is a TOP_UP transaction)."""


@contextmanager
def _refusals_exit_2(as_json: bool, amount_argument: str) -> Iterator[None]:
    """A DomainError of the service becomes exit 2 with its message (and `{"error": …}` on
    stdout with --json); an amount's message says which argument it is about."""
    from services.accounts.errors import InvalidAmount
    from services.errors import DomainError

    try:
        yield
    except DomainError as exc:
        message = exc.message
        if isinstance(exc, InvalidAmount):
            message = f"{amount_argument}: {message}"
        if as_json:
            click.echo(json.dumps({"error": message}))
        click.echo(f"error: {message}", err=True)
        sys.exit(ExitCode.CONFIG)


def _print_user(payload: Mapping[str, object], as_json: bool, title: str) -> None:
    if as_json:
        click.echo(json.dumps(payload))
        return
    admin = " (admin)" if payload.get("is_admin") else ""
    Console().print(
        f"[green]{title}[/] {payload['email']} (id {payload['id']}), "
        f"balance {payload['balance']}{admin}"
    )


@user.command("create")
@click.argument("email")
@click.option("--password", required=True, help="initial password (argon2-hashed, never logged)")
@click.option("--name", default="", help="display name")
@click.option("--balance", default="0", help="opening balance, booked as a TOP_UP")
@click.option("--admin", is_flag=True, help="may use the operations console (audited)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def create(email: str, password: str, name: str, balance: str, admin: bool,
           as_json: bool) -> None:
    """Create a user with EMAIL (no welcome email is sent)."""
    from db.session import make_engine, make_session_factory
    from keysync.cli._ops import cli_actor
    from services.accounts import auth
    from services.ops.admins import set_admin

    settings = get_settings()
    settings.require("database_url")
    # No connection is made before the service has validated the input.
    engine = make_engine(settings.database_url, pool_size=1, application_name="keysync-cli")
    sessions = make_session_factory(engine)
    try:
        with _refusals_exit_2(as_json, "--balance"):
            created = auth.create_user(
                sessions,
                email=email,
                password=password,
                name=name,
                balance=balance,
            )
            # Its own transaction, with its audit row: should it fail, the user exists
            # without the grant and `keysync user admin EMAIL` completes it.
            if admin:
                set_admin(sessions, email=created.email, admin=True, actor=cli_actor())
    finally:
        engine.dispose()
    _print_user({**auth.user_view(created), "is_admin": admin}, as_json, "created")


@user.command("top-up")
@click.argument("email")
@click.argument("amount")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def top_up(email: str, amount: str, as_json: bool) -> None:
    """Credit AMOUNT to the balance of the user with EMAIL."""
    from keysync.resources import Resources
    from services.accounts import auth
    from worker.broker import make_broker

    settings = get_settings()
    resources = Resources.build(settings, make_broker(settings), pool_size=1, name="keysync-cli")
    try:
        with _refusals_exit_2(as_json, "AMOUNT"):
            # The cache is passed so the user's cached transaction list is invalidated.
            credited = auth.top_up(resources.sessions, resources.cache, email=email, amount=amount)
    finally:
        resources.close()
    _print_user(auth.user_view(credited), as_json, "topped up")


@user.command("admin")
@click.argument("email")
@click.option("--revoke", is_flag=True, help="take the operations console away instead")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def admin(email: str, revoke: bool, as_json: bool) -> None:
    """Grant (or --revoke) the operations console to the user with EMAIL (audited)."""
    from db.session import make_engine, make_session_factory
    from keysync.cli._ops import cli_actor
    from services.ops.admins import set_admin

    settings = get_settings()
    settings.require("database_url")
    engine = make_engine(settings.database_url, pool_size=1, application_name="keysync-cli")
    try:
        with _refusals_exit_2(as_json, "EMAIL"):
            view = set_admin(make_session_factory(engine), email=email, admin=not revoke,
                             actor=cli_actor())
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(view.dump()))
    else:
        state = "[green]admin[/]" if view.is_admin else "not admin"
        Console().print(f"{view.email} (id {view.id}) is now {state}")
