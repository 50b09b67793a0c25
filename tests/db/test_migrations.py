"""Alembic: `keysync db upgrade` is idempotent and the migration matches the models."""

from __future__ import annotations

import os
import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from db.models import Base


def test_db_upgrade_twice_is_a_no_op(database_url: str) -> None:
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "keysync", "db", "upgrade"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "DATABASE_URL": database_url},
        )
        assert result.returncode == 0, result.stderr
        assert "database at head" in result.stdout


def test_models_and_migration_agree(engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert diff == []


def test_contract_tables_exist(engine) -> None:
    tables = set(inspect(engine).get_table_names())
    assert {
        "users",
        "games",
        "cart_items",
        "wishlist_items",
        "orders",
        "order_items",
        "transactions",
        "g2a_purchases",
        "webhook_events",
        "sync_runs",
        "cache_invalidations",
    } <= tables


def test_money_constraints_hold_in_the_database(engine) -> None:
    import pytest
    from sqlalchemy.exc import IntegrityError

    with engine.begin() as conn:
        uid = conn.execute(
            text(
                "INSERT INTO users (id, email, password_hash) VALUES "
                "(gen_random_uuid(), 'A@x.io', 'h') RETURNING id"
            )
        ).scalar()
    for statement in (
        "INSERT INTO users (id, email, password_hash) VALUES (gen_random_uuid(), 'a@X.IO', 'h')",
        f"UPDATE users SET balance = -0.01 WHERE id = '{uid}'",
        "INSERT INTO cart_items (user_id, session_id, game_id, quantity) "
        f"VALUES ('{uid}', 's', gen_random_uuid(), 1)",
    ):
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(statement))
    with engine.begin() as conn:
        oid = conn.execute(
            text(
                f"INSERT INTO orders (id, user_id, status, total) VALUES "
                f"(gen_random_uuid(), '{uid}', 'PENDING', 1) RETURNING id"
            )
        ).scalar()
        conn.execute(
            text(
                f"INSERT INTO transactions (id, user_id, order_id, type, amount, status)"
                f" VALUES (gen_random_uuid(), '{uid}', '{oid}', 'PURCHASE', 1, "
                "'COMPLETED')"
            )
        )
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO transactions (id, user_id, order_id, type, amount, status)"
                f" VALUES (gen_random_uuid(), '{uid}', '{oid}', 'PURCHASE', 1, "
                "'COMPLETED')"
            )
        )
