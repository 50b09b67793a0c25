"""Commands: `keysync user create` and `keysync user top-up` (admin helpers).

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


def _print_user(payload: Mapping[str, str], as_json: bool, title: str) -> None:
    if as_json:
        click.echo(json.dumps(payload))
        return
    Console().print(
        f"[green]{title}[/] {payload['email']} (id {payload['id']}), balance {payload['balance']}"
    )


@user.command("create")
@click.argument("email")
@click.option("--password", required=True, help="initial password (argon2-hashed, never logged)")
@click.option("--name", default="", help="display name")
@click.option("--balance", default="0", help="opening balance, booked as a TOP_UP")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def create(email: str, password: str, name: str, balance: str, as_json: bool) -> None:
    """Create a user with EMAIL (no welcome email is sent)."""
    from db.session import make_engine, make_session_factory
    from services.accounts import auth

    settings = get_settings()
    settings.require("database_url")
    # No connection is made before the service has validated the input.
    engine = make_engine(settings.database_url, pool_size=1, application_name="keysync-cli")
    try:
        with _refusals_exit_2(as_json, "--balance"):
            created = auth.create_user(
                make_session_factory(engine),
                email=email,
                password=password,
                name=name,
                balance=balance,
            )
    finally:
        engine.dispose()
    _print_user(auth.user_view(created), as_json, "created")


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
