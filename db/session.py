"""Engine and session factory; transactions are explicit at the call site (`session.begin()`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker


def make_engine(
    database_url: str, *, pool_size: int = 5, application_name: str = "keysync"
) -> Engine:
    return create_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size * 2,
        pool_pre_ping=True,
        pool_timeout=5,
        connect_args={"connect_timeout": 3, "application_name": application_name},
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: services return ORM objects that callers read after commit.
    return sessionmaker(engine, expire_on_commit=False, autobegin=True)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that is always closed; the caller owns the transaction with session.begin()."""
    session = factory()
    try:
        yield session
    finally:
        session.close()
