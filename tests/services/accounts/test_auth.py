"""Auth service on real Postgres/Redis: atomic registration, races, login and migration."""

from __future__ import annotations

import threading
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
from argon2 import PasswordHasher
from pydantic import SecretStr
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from db.models import CartItem, Game, JobOutbox, Transaction, TransactionType, User
from services.accounts import auth, email, tokens
from services.cart.service import Owner
from tests.helpers import lock_waiters, wait_until
from tests.services.accounts.support import job_outbox_inserts_fail
from worker.broker import create_broker

# Cheap parameters where the hash cost is not what a test is about.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def count(session: Any, model: Any) -> int:
    with session.begin():
        return int(session.scalar(select(func.count()).select_from(model)))


def test_register_creates_user_token_and_sends_welcome(sessions: Any, session: Any,
                                                       broker: Any, settings: Any,
                                                       redis_client: Any) -> None:
    result = auth.register(sessions, broker, settings, email="  Ana@Example.com ",
                           password="correct horse", name="Ana")
    assert result.user.email == "Ana@Example.com"
    assert tokens.verify(result.token, settings.jwt_secret.get_secret_value()) == result.user.id
    assert result.user.password_hash.startswith("$argon2id$")
    assert auth.user_view(result.user)["balance"] == "0.00"
    assert count(session, JobOutbox) == 0  # dispatched: handed to the broker
    assert redis_client.llen("dramatiq:default") == 1


def test_duplicate_email_is_case_insensitive(sessions: Any, broker: Any, settings: Any) -> None:
    auth.register(sessions, broker, settings, email="bob@example.com", password="password1",
                  hasher=FAST)
    with pytest.raises(auth.EmailTaken):
        auth.register(sessions, broker, settings, email="BOB@example.COM ", password="x" * 8,
                      hasher=FAST)


def test_register_is_atomic_when_a_step_after_the_insert_fails(
    sessions: Any, session: Any, engine: Any, broker: Any, settings: Any
) -> None:
    # T009: a real database failure after the user row is inserted (staging the welcome
    # email raises), so the transaction must leave no user behind.
    with job_outbox_inserts_fail(engine), pytest.raises(DBAPIError, match="injected failure"):
        auth.register(sessions, broker, settings, email="atomic@example.com",
                      password="password1", hasher=FAST)
    assert count(session, User) == 0
    assert count(session, JobOutbox) == 0


def test_concurrent_duplicates_one_wins(sessions: Any, session: Any, engine: Any,
                                        broker: Any, settings: Any) -> None:
    # An uncommitted insert of the same address makes both registrations wait on the unique
    # index at the same time; when it rolls back, exactly one of them may win.
    outcomes: list[str] = []

    def attempt(address: str) -> None:
        try:
            auth.register(sessions, broker, settings, email=address, password="password1",
                          hasher=FAST)
            outcomes.append("created")
        except auth.EmailTaken:
            outcomes.append("taken")

    with engine.connect() as blocker:
        blocker.execute(text("INSERT INTO users (id, email, password_hash) "
                             "VALUES (gen_random_uuid(), 'race@example.com', 'x')"))
        threads = [threading.Thread(target=attempt, args=(a,))
                   for a in ("race@example.com", "RACE@example.com")]
        for t in threads:
            t.start()
        # Both inserts wait on the blocker's transaction (the unique index), in Postgres.
        wait_until(lambda: lock_waiters(engine, "transactionid") == 2, 10,
                   "both registrations waiting on the uncommitted address")
        assert all(t.is_alive() for t in threads)
        blocker.rollback()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) == ["created", "taken"]
    assert count(session, User) == 1


def test_register_with_broker_down_still_succeeds(sessions: Any, session: Any, settings: Any,
                                                  dead_redis_url: str) -> None:
    dead = create_broker(dead_redis_url)
    started = time.perf_counter()
    auth.register(sessions, dead, settings, email="nobroker@example.com", password="password1",
                  hasher=FAST)
    assert time.perf_counter() - started < 1.0
    with session.begin():
        staged = session.scalars(select(JobOutbox)).all()
    # Left for the scheduled relay, never lost.
    assert [(j.actor_name, j.args[0], j.attempts) for j in staged] == [
        ("send_email", "nobroker@example.com", 1)
    ]


def test_login_verifies_and_rejects(sessions: Any, cache: Any, broker: Any,
                                    settings: Any) -> None:
    auth.register(sessions, broker, settings, email="cat@example.com", password="password1",
                  hasher=FAST)
    ok = auth.login(sessions, cache, broker, settings, email=" CAT@example.com",
                    password="password1", hasher=FAST)
    assert ok.migration == "none" and ok.user.email == "cat@example.com"
    with pytest.raises(auth.InvalidCredentials):
        auth.login(sessions, cache, broker, settings, email="cat@example.com",
                   password="wrong-password", hasher=FAST)
    with pytest.raises(auth.InvalidCredentials):
        auth.login(sessions, cache, broker, settings, email="nobody@example.com",
                   password="password1", hasher=FAST)


def test_login_rehashes_outdated_parameters(sessions: Any, session: Any, cache: Any,
                                            broker: Any, settings: Any) -> None:
    auth.register(sessions, broker, settings, email="old@example.com", password="password1",
                  hasher=FAST)
    auth.login(sessions, cache, broker, settings, email="old@example.com",
               password="password1")  # the default hasher wants stronger parameters
    with session.begin():
        stored = session.scalar(select(User.password_hash))
    assert not auth.PASSWORD_HASHER.check_needs_rehash(stored)


def _guest_cart(session: Any, sid: str) -> uuid.UUID:
    game = Game(g2a_product_id="p1", slug="s1", name="G", price=Decimal("1.00"),
                g2a_price=Decimal("1.00"), in_stock=True)
    with session.begin():
        session.add(game)
        session.flush()
        session.add(CartItem(**Owner.guest(sid).values(), game_id=game.id, quantity=2))
    return game.id


def test_login_queues_migration_or_runs_it_inline(sessions: Any, session: Any, cache: Any,
                                                   broker: Any, settings: Any,
                                                   redis_client: Any,
                                                   dead_redis_url: str) -> None:
    user = auth.register(sessions, broker, settings, email="mig@example.com",
                         password="password1", hasher=FAST).user
    redis_client.delete("dramatiq:default")  # the welcome email
    _guest_cart(session, "sid-1")
    started = auth.GUEST_MIGRATIONS_STARTED
    before = {m: started.labels(m)._value.get() for m in ("queued", "inline")}
    queued = auth.login(sessions, cache, broker, settings, email="mig@example.com",
                        password="password1", session_id="sid-1", hasher=FAST)
    assert queued.migration == "queued"
    assert redis_client.llen("dramatiq:default") == 1

    dead = create_broker(dead_redis_url)
    done = auth.login(sessions, cache, dead, settings, email="mig@example.com",
                      password="password1", session_id="sid-1", hasher=FAST)
    assert done.migration == "done"
    with session.begin():
        owners = session.execute(select(CartItem.user_id, CartItem.session_id)).all()
    assert owners == [(user.id, None)]
    assert {m: started.labels(m)._value.get() - before[m] for m in before} == {
        "queued": 1, "inline": 1}


def test_create_user_and_top_up_book_transactions(sessions: Any, session: Any,
                                                  cache: Any) -> None:
    user = auth.create_user(sessions, email="rich@example.com", password="password1",
                            balance=Decimal("10.50"), hasher=FAST)
    assert user.balance == Decimal("10.50")
    topped = auth.top_up(sessions, cache, email="RICH@example.com", amount=Decimal("4.50"))
    assert topped.balance == Decimal("15.00")
    with session.begin():
        booked = session.execute(select(Transaction.type, Transaction.amount)
                                 .order_by(Transaction.created_at)).all()
    assert booked == [(TransactionType.TOP_UP, Decimal("10.50")),
                      (TransactionType.TOP_UP, Decimal("4.50"))]
    with pytest.raises(auth.UserNotFound):
        auth.top_up(sessions, cache, email="ghost@example.com", amount=Decimal("1"))
    for bad in ("0", "-1", "1.001", "NaN", "abc", "99999999999"):
        with pytest.raises(auth.InvalidAmount):
            auth.parse_amount(bad)


def test_email_log_backend_and_unreachable_smtp(settings: Any) -> None:
    email.send_email(settings, "a@example.com", "Hello", "body")  # log backend: no I/O
    from keysync.embedded import free_port

    smtp = settings.model_copy(update={
        "email_backend": "smtp", "smtp_url": SecretStr(f"smtp://u:pw@127.0.0.1:{free_port()}")})
    with pytest.raises(OSError):
        email.send_email(smtp, "a@example.com", "Hello", "body")


# --- email case: compared in one place, Postgres lower() ---------------------------------

# Addresses where Python's str.lower() and Postgres lower() disagree (final sigma: Python
# folds the last capital sigma to the final form, Postgres to the medial one; dotted capital
# I: Python gives "i" + U+0307, Postgres a single letter or none), plus plain mixed case.
TRICKY_EMAILS = ["ΟΔΥΣΣΕΥΣ@example.com", "İSTANBUL.İzmir@example.com",
                 "MiXeD.CaSe@Example.COM"]


def _pg_lower(session: Any, value: str) -> str:
    with session.begin():
        return str(session.scalar(select(func.lower(value))))


def case_variants(session: Any, address: str) -> list[str]:
    """Other spellings of `address` that Postgres lower() equates with it (never itself)."""
    candidates = {address.upper(), address.lower(), address.swapcase(), address.casefold(),
                  _pg_lower(session, address), address.title()}
    candidates.discard(address)
    with session.begin():
        equal = [c for c in sorted(candidates)
                 if session.scalar(select(func.lower(c) == func.lower(address)))]
    assert _pg_lower(session, address) in equal or _pg_lower(session, address) == address
    return equal


def test_python_and_postgres_lower_disagree_on_the_tricky_addresses(session: Any) -> None:
    # Guards the tests below: without this disagreement they would not exercise the bug.
    for address in TRICKY_EMAILS[:2]:
        assert _pg_lower(session, address) != address.lower(), address


@pytest.mark.parametrize("address", TRICKY_EMAILS)
def test_any_registered_address_logs_in_and_is_found(sessions: Any, session: Any, cache: Any,
                                                     broker: Any, settings: Any,
                                                     address: str) -> None:
    user = auth.register(sessions, broker, settings, email=address, password="password1",
                         hasher=FAST).user
    assert user.email == address  # stored as typed
    same = auth.login(sessions, cache, broker, settings, email=f" {address} ",
                      password="password1", hasher=FAST)
    assert same.user.id == user.id
    variants = case_variants(session, address)
    if address.isascii():
        assert {address.lower(), address.upper()} <= set(variants)
    for variant in variants:
        logged_in = auth.login(sessions, cache, broker, settings, email=variant,
                               password="password1", hasher=FAST)
        assert logged_in.user.id == user.id, variant
        with pytest.raises(auth.EmailTaken):
            auth.register(sessions, broker, settings, email=variant, password="password1",
                          hasher=FAST)
        with pytest.raises(auth.EmailTaken):
            auth.create_user(sessions, email=variant, password="password1", hasher=FAST)
    # Python's lower() is not an oracle: when Postgres does not equate it, it is another
    # address, consistently for login and registration.
    if address.lower() not in variants:
        with pytest.raises(auth.InvalidCredentials):
            auth.login(sessions, cache, broker, settings, email=address.lower(),
                       password="password1", hasher=FAST)
    topped = auth.top_up(sessions, cache, email=(variants or [address])[0],
                         amount=Decimal("3.00"))
    assert topped.id == user.id and topped.balance == Decimal("3.00")
    assert count(session, User) == 1
