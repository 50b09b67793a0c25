"""`keysync user create` / `keysync user top-up` against the test database."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from click.testing import CliRunner
from sqlalchemy import func, select

from db.models import Transaction, TransactionType, User
from keysync.cli import main


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_create_with_opening_balance_and_top_up(session: Any) -> None:
    created = run("user", "create", "Cli@Example.com", "--password", "password1",
                  "--balance", "5", "--json")
    assert created.exit_code == 0, created.output
    body = json.loads(created.stdout)
    assert body["email"] == "Cli@Example.com" and body["balance"] == "5.00"
    topped = run("user", "top-up", "cli@example.com", "12.34", "--json")
    assert topped.exit_code == 0, topped.output
    assert json.loads(topped.stdout)["balance"] == "17.34"
    with session.begin():
        assert session.scalar(select(User.balance)) == Decimal("17.34")
        assert session.execute(select(Transaction.type, Transaction.amount)
                               .order_by(Transaction.created_at)).all() == [
            (TransactionType.TOP_UP, Decimal("5.00")), (TransactionType.TOP_UP, Decimal("12.34"))]
    assert "password1" not in created.output


def test_bad_input_exits_2_with_a_clear_message() -> None:
    assert run("user", "create", "a@example.com", "--password", "password1").exit_code == 0
    duplicate = run("user", "create", "A@example.com", "--password", "password1")
    assert duplicate.exit_code == 2 and "already exists" in duplicate.output
    for args, message in [
        (("user", "create", "nope", "--password", "password1"), "not an email"),
        (("user", "create", "b@example.com", "--password", "short"), "at least 8"),
        (("user", "create", "b@example.com", "--password", "password1", "--balance", "x"),
         "--balance"),
        (("user", "top-up", "a@example.com", "0"), "must be positive"),
        (("user", "top-up", "a@example.com", "1.001"), "2 decimal"),
        (("user", "top-up", "ghost@example.com", "5"), "no user"),
    ]:
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    assert run("user", "create", "c@example.com").exit_code == 2  # --password missing


def test_top_up_finds_unicode_addresses_as_postgres_folds_them(session: Any) -> None:
    # Python's str.lower() disagrees with Postgres lower() on final sigma and dotted İ;
    # the CLI must find the user exactly as login and the unique index do.
    for address, variant in [("ΟΔΥΣΣΕΥΣ@example.com", "οδυσσευσ@example.com"),
                             ("İlkay@Example.com", "ilkay@example.com")]:
        with session.begin():
            assert session.scalar(select(func.lower(variant) == func.lower(address)))
        created = run("user", "create", address, "--password", "password1", "--json")
        assert created.exit_code == 0, created.output
        for typed in (address, variant):
            topped = run("user", "top-up", typed, "1.50", "--json")
            assert topped.exit_code == 0, (typed, topped.output)
            assert json.loads(topped.stdout)["email"] == address
        assert json.loads(topped.stdout)["balance"] == "3.00"
        duplicate = run("user", "create", variant, "--password", "password1")
        assert duplicate.exit_code == 2 and "already exists" in duplicate.output
    with session.begin():
        assert session.scalar(select(func.count()).select_from(User)) == 2


def test_the_services_refusals_reach_the_cli_as_exit_2_and_json(session: Any) -> None:
    # Rules only the service knows (here the name's length) reach the CLI unchanged.
    too_long = run("user", "create", "d@example.com", "--password", "password1",
                   "--name", "x" * 201, "--json")
    assert too_long.exit_code == 2
    assert json.loads(too_long.stdout) == {"error": "name must be at most 200 characters"}
    bad_amount = run("user", "top-up", "d@example.com", "12.345", "--json")
    assert bad_amount.exit_code == 2
    assert json.loads(bad_amount.stdout) == {
        "error": "AMOUNT: amount has more than 2 decimal places"}
    with session.begin():
        assert session.scalar(select(func.count()).select_from(User)) == 0
