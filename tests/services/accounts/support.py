"""Shared by the accounts service tests and the auth API tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine


@contextmanager
def job_outbox_inserts_fail(engine: Engine) -> Iterator[None]:
    """A real database failure after the user row is inserted: staging any job (the welcome
    email) raises 'injected failure' until the block ends."""
    with engine.begin() as conn:
        conn.exec_driver_sql("""
            CREATE FUNCTION test_fail_outbox() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
            CREATE TRIGGER test_fail_outbox BEFORE INSERT ON job_outbox
            FOR EACH ROW EXECUTE FUNCTION test_fail_outbox();
        """)
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER test_fail_outbox ON job_outbox;"
                                 "DROP FUNCTION test_fail_outbox();")
