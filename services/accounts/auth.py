"""Accounts: registration, login (with guest-data migration), admin create and top-up.

- Passwords are hashed with argon2id (argon2-cffi) through `services.accounts.passwords`:
  at most one hash per core at once per process, a short wait for a slot, then
  `PasswordHashBusy`. Hashing happens outside any database transaction so a pooled
  connection is never held for the time it costs.
- Sign-in (`authenticate`, shared by the API's login and the operations console) is rate
  limited per client address, then per email (`services.accounts.rate_limit`), before any
  password is checked; an unknown email is limited, and costs a hash, exactly like a known
  one, so neither the status nor the timing tells which emails have accounts.
- Emails are stored as typed (surrounding spaces stripped) and compared case-insensitively
  in one place only: Postgres `lower()`. The unique index on lower(email) is the arbiter of
  registration (two concurrent registrations of the same address give one user and one
  EmailTaken, with no check-then-insert window), and every lookup compares
  `lower(email) = lower(:typed)` in SQL. Python's `str.lower()` must never take part: it
  differs from Postgres for some letters (final sigma, dotted capital I), so an address
  could register and then never be found.
- The welcome email is enqueued (`worker.enqueue`) inside the registration transaction and
  sent right after commit: one LPUSH to a live broker, an instantly refused connection to a
  dead one (the job then waits in the outbox for the relay). Sending never raises, so
  nothing about email can fail a registration.
- Login sends the guest migration with `send_now`, not after a commit: whether the broker
  took it decides what the response says, and when it refuses the migration runs inline and
  login still succeeds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

import dramatiq
import structlog
from argon2 import PasswordHasher
from prometheus_client import Counter
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db.models import Transaction, TransactionStatus, TransactionType, User
from keysync.settings import Settings
from services.accounts import migration, tokens
from services.accounts.errors import (
    EmailTaken,
    InvalidAmount,
    InvalidCredentials,
    LoginRateLimited,
    PasswordHashBusy,
    UserNotFound,
)
from services.accounts.passwords import (
    HASH_SLOTS,
    PASSWORD_HASHER,
    HashSlots,
    hash_password,
    verify_password,
    verify_unknown_user,
)
from services.accounts.rate_limit import LoginLimits
from services.accounts.schemas import MigrationOutcome, UserView
from services.accounts.validation import (
    MAX_BALANCE,
    check_email,
    check_name,
    check_password,
    normalise_email,
    parse_amount,
)
from services.cache import Cache, keys
from worker.enqueue import Actor, enqueue, send_now

log = structlog.get_logger(__name__)

EMAIL_INDEX = "users_email_lower_key"
WELCOME_SUBJECT = "Welcome to keysync"

AUTH_EVENTS = Counter(
    "keysync_auth_events_total", "Registrations and logins by outcome", ["event", "outcome"]
)  # register: created | email_taken; login: ok | bad_credentials | rate_limited | busy
GUEST_MIGRATIONS_STARTED = Counter(
    "keysync_guest_migrations_started_total", "Guest migrations started at login", ["mode"]
)  # queued | inline (broker refused)

__all__ = [
    "PASSWORD_HASHER", "AuthResult", "EmailTaken", "InvalidAmount", "InvalidCredentials",
    "LoginRateLimited", "PasswordHashBusy", "UserNotFound", "authenticate", "create_user",
    "lock_user", "login", "parse_amount", "register", "top_up", "user_view",
]


@dataclass(frozen=True)
class AuthResult:
    user: User
    token: str
    migration: MigrationOutcome = "none"


def user_view(user: User) -> dict[str, str]:
    """The contract's user shape `{id, email, name, balance}`, JSON-ready (for the CLI)."""
    return UserView.model_validate(user).model_dump(mode="json")


def email_matches(email: str) -> ColumnElement[bool]:
    """The one email comparison: both sides folded by Postgres, as the unique index is."""
    return func.lower(User.email) == func.lower(normalise_email(email))


def find_user(session: Session, email: str) -> User | None:
    return session.execute(select(User).where(email_matches(email))).scalar_one_or_none()


def lock_user(session: Session, email: str) -> User:
    """The user with `email`, row-locked until the caller's transaction ends; UserNotFound
    otherwise (for changes to one account: top-ups, admin grants)."""
    user = session.execute(
        select(User).where(email_matches(email)).with_for_update()
    ).scalar_one_or_none()
    if user is None:
        raise UserNotFound(f"no user with email {normalise_email(email)!r}")
    return user


def issue_token(settings: Settings, user_id: uuid.UUID) -> str:
    return tokens.issue(user_id, settings.jwt_secret.get_secret_value(), settings.jwt_ttl_s)


# --- registration ------------------------------------------------------------------------


def register(
    sessions: sessionmaker[Session],
    broker: dramatiq.Broker,
    settings: Settings,
    *,
    email: str,
    password: str,
    name: str = "",
    hasher: PasswordHasher = PASSWORD_HASHER,
    slots: HashSlots = HASH_SLOTS,
) -> AuthResult:
    """Create the user and enqueue the welcome email in one transaction; EmailTaken on a dup."""
    email, name = check_email(email), check_name(name)
    password_hash = hash_password(check_password(password), hasher=hasher, slots=slots)
    with sessions() as session:
        try:
            with session.begin():
                user = _insert_user(session, email, password_hash, name)
                enqueue(session, broker, Actor.SEND_EMAIL, email, WELCOME_SUBJECT,
                        _welcome_body(name))
        except IntegrityError as exc:
            _raise_if_email_taken(exc)
            raise
    AUTH_EVENTS.labels("register", "created").inc()
    log.info("user registered", user_id=str(user.id))
    return AuthResult(user=user, token=issue_token(settings, user.id))


def _insert_user(session: Session, email: str, password_hash: str, name: str) -> User:
    user = User(email=email, password_hash=password_hash, name=name, balance=Decimal("0.00"))
    session.add(user)
    session.flush()  # the unique index answers here, inside the transaction
    return user


def _raise_if_email_taken(exc: IntegrityError) -> None:
    diag = getattr(exc.orig, "diag", None)
    if getattr(diag, "constraint_name", None) == EMAIL_INDEX:
        AUTH_EVENTS.labels("register", "email_taken").inc()
        raise EmailTaken() from None


def _welcome_body(name: str) -> str:
    greeting = f"Hi {name}," if name else "Hi,"
    return f"{greeting}\n\nyour keysync account is ready. Happy gaming!\n"


# --- login -------------------------------------------------------------------------------


def authenticate(
    sessions: sessionmaker[Session],
    *,
    email: str,
    password: str,
    limits: LoginLimits | None = None,
    client_address: str | None = None,
    hasher: PasswordHasher = PASSWORD_HASHER,
    slots: HashSlots = HASH_SLOTS,
) -> User:
    """The user whose email and password these are, for every sign-in (API and console).

    Refusals, in the order checked: LoginRateLimited (per address before the database is
    touched, then per email), PasswordHashBusy (no hashing slot within the short wait),
    InvalidCredentials (unknown email or wrong password, indistinguishable). Without
    `limits` nothing is rate limited (benchmarks, tests of other rules).
    """
    try:
        if limits is not None and client_address is not None:
            limits.check_address(client_address)
        with sessions() as session, session.begin():
            folded = session.execute(select(func.lower(normalise_email(email)))).scalar_one()
            user = find_user(session, email)
        if limits is not None:
            limits.check_email(folded)
        if user is None:
            verify_unknown_user(password, hasher=hasher, slots=slots)
            ok = False
        else:
            ok = verify_password(user.password_hash, password, hasher=hasher, slots=slots)
    except LoginRateLimited:
        AUTH_EVENTS.labels("login", "rate_limited").inc()
        raise
    except PasswordHashBusy:
        AUTH_EVENTS.labels("login", "busy").inc()
        raise
    if user is None or not ok:
        AUTH_EVENTS.labels("login", "bad_credentials").inc()
        raise InvalidCredentials()
    if hasher.check_needs_rehash(user.password_hash) and _rehash(
        sessions, hasher, slots, user, password
    ):
        log.info("password rehashed with current parameters", user_id=str(user.id))
    return user


def login(
    sessions: sessionmaker[Session],
    cache: Cache,
    broker: dramatiq.Broker,
    settings: Settings,
    *,
    email: str,
    password: str,
    session_id: str | None = None,
    limits: LoginLimits | None = None,
    client_address: str | None = None,
    hasher: PasswordHasher = PASSWORD_HASHER,
    slots: HashSlots = HASH_SLOTS,
) -> AuthResult:
    """Sign in (`authenticate`), issue a token, and hand the guest's data to the user."""
    user = authenticate(sessions, email=email, password=password, limits=limits,
                        client_address=client_address, hasher=hasher, slots=slots)
    bound = log.bind(user_id=str(user.id))
    outcome: MigrationOutcome = "none"
    if session_id is not None:
        outcome = _start_migration(sessions, cache, broker, session_id, user.id, bound)
    AUTH_EVENTS.labels("login", "ok").inc()
    bound.info("user logged in", migration=outcome)
    return AuthResult(user=user, token=issue_token(settings, user.id), migration=outcome)


def _rehash(
    sessions: sessionmaker[Session], hasher: PasswordHasher, slots: HashSlots, user: User,
    password: str,
) -> bool:
    try:
        new_hash = hash_password(password, hasher=hasher, slots=slots)
    except PasswordHashBusy:
        # The login itself succeeded; the upgrade can wait for a quieter sign-in.
        return False
    with sessions() as session, session.begin():
        # Only if unchanged since we read it: a concurrent password change must win.
        session.execute(
            update(User)
            .where(User.id == user.id, User.password_hash == user.password_hash)
            .values(password_hash=new_hash)
        )
    user.password_hash = new_hash
    return True


def _start_migration(
    sessions: sessionmaker[Session],
    cache: Cache,
    broker: dramatiq.Broker,
    session_id: str,
    user_id: uuid.UUID,
    bound: structlog.typing.FilteringBoundLogger,
) -> MigrationOutcome:
    with sessions() as session, session.begin():
        if not migration.has_guest_data(session, session_id):
            return "none"
    try:
        send_now(broker, Actor.MIGRATE_GUEST_DATA, session_id, str(user_id))
        GUEST_MIGRATIONS_STARTED.labels("queued").inc()
        return "queued"
    except Exception as exc:
        # Deliberately not the outbox: the guest expects to see their cart now, not when the
        # broker comes back. The migration is idempotent, so a message that did reach the
        # broker despite the error is harmless.
        bound.warning("broker unavailable; migrating guest data inline", error=str(exc))
    GUEST_MIGRATIONS_STARTED.labels("inline").inc()
    with sessions() as session:
        migration.migrate_guest_data(session, cache, session_id, user_id)
    return "done"


# --- admin helpers (CLI) -----------------------------------------------------------------
#
# They take input as typed (strings are fine for amounts) and validate it here, raising
# `InvalidInput` subclasses with messages a CLI can print as they are.


def create_user(
    sessions: sessionmaker[Session],
    *,
    email: str,
    password: str,
    name: str = "",
    balance: Decimal | str = Decimal("0"),
    hasher: PasswordHasher = PASSWORD_HASHER,
    slots: HashSlots = HASH_SLOTS,
) -> User:
    """Admin create (no welcome email); an opening balance is booked as a TOP_UP."""
    email, name = check_email(email), check_name(name)
    opening = parse_amount(balance, allow_zero=True)
    password_hash = hash_password(check_password(password), hasher=hasher, slots=slots)
    with sessions() as session:
        try:
            with session.begin():
                user = _insert_user(session, email, password_hash, name)
                if opening > 0:
                    _credit(session, user, opening)
        except IntegrityError as exc:
            _raise_if_email_taken(exc)
            raise
    log.info("user created", user_id=str(user.id), opening_balance=str(opening))
    return user


def top_up(
    sessions: sessionmaker[Session], cache: Cache | None, *, email: str, amount: Decimal | str
) -> User:
    """Credit `amount` with a TOP_UP transaction, both in one database transaction."""
    credit = parse_amount(amount)
    with sessions() as session, session.begin():
        user = lock_user(session, email)
        if user.balance + credit > MAX_BALANCE:
            raise InvalidAmount(f"balance would exceed {MAX_BALANCE}")
        _credit(session, user, credit)
    if cache is not None:
        cache.invalidate([keys.user_transactions(user.id)])
    log.info("balance topped up", user_id=str(user.id), amount=str(credit))
    return user


def _credit(session: Session, user: User, amount: Decimal) -> None:
    session.add(
        Transaction(
            user_id=user.id,
            type=TransactionType.TOP_UP,
            amount=amount,
            status=TransactionStatus.COMPLETED,
        )
    )
    # Safe in Python: callers hold the row (locked FOR UPDATE, or inserted by this
    # transaction), so no concurrent credit or debit can be lost between read and write.
    user.balance = user.balance + amount
    session.flush()
