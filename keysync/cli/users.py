"""Commands: `keysync user create` and `keysync user top-up` (admin helpers)."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from typing import NoReturn

import click
from rich.console import Console

from keysync.cli import EXIT_CONFIG, main
from keysync.settings import get_settings


@main.group()
def user() -> None:
    """Create users and credit balances (a top-up is a TOP_UP transaction)."""


def _fail(message: str, as_json: bool) -> NoReturn:
    # Bad input (a taken email, an unknown user, a malformed amount) is a usage error: exit 2.
    if as_json:
        click.echo(json.dumps({"error": message}))
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_CONFIG)


def _print_user(payload: dict[str, object], as_json: bool, title: str) -> None:
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

    if "@" not in email.strip() or len(email.strip()) > 320:
        _fail(f"not an email address: {email!r}", as_json)
    if len(password) < 8:
        _fail("password must be at least 8 characters", as_json)
    try:
        opening = auth.parse_amount(balance, allow_zero=True)
    except auth.InvalidAmount as exc:
        _fail(f"--balance: {exc}", as_json)
    settings = get_settings()
    settings.require("database_url")
    engine = make_engine(settings.database_url, pool_size=1, application_name="keysync-cli")
    try:
        created = auth.create_user(
            make_session_factory(engine),
            email=email,
            password=password,
            name=name,
            balance=opening,
        )
    except auth.EmailTaken:
        _fail(f"a user with email {email.strip()!r} already exists", as_json)
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

    try:
        value: Decimal = auth.parse_amount(amount)
    except auth.InvalidAmount as exc:
        _fail(f"AMOUNT: {exc}", as_json)
    settings = get_settings()
    from worker import broker

    resources = Resources.build(settings, broker, pool_size=1, name="keysync-cli")
    try:
        # The cache is passed so the user's cached transaction list is invalidated.
        credited = auth.top_up(resources.sessions, resources.cache, email=email, amount=value)
    except auth.UserNotFound:
        _fail(f"no user with email {email.strip()!r}", as_json)
    except auth.InvalidAmount as exc:
        _fail(f"AMOUNT: {exc}", as_json)
    finally:
        resources.close()
    _print_user(auth.user_view(credited), as_json, "topped up")
