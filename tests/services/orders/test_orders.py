"""T024: order creation is atomic; the balance is never spent twice."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from db.models import (
    CartItem,
    JobOutbox,
    OrderStatus,
    Transaction,
    TransactionStatus,
    TransactionType,
)
from keysync.resources import Resources
from services.cache import keys
from services.games.errors import GameUnavailable
from services.orders import service as orders
from services.orders.errors import EmptyOrder, InsufficientBalance, OrderNotFound
from tests.helpers import wait_until
from tests.order_flows import assert_invariants
from tests.order_helpers import balance, make_game, make_user


def _counts(resources: Resources) -> tuple[int, int, int]:
    """Orders, order items and PURCHASE transactions: all zero after a refused order."""
    with resources.sessions() as s:
        orders_, items, purchases = s.execute(text(
            "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM order_items),"
            " (SELECT count(*) FROM transactions WHERE type = 'PURCHASE')")).one()
        return int(orders_), int(items), int(purchases)


def _create(resources: Resources, user_id: uuid.UUID, lines: list[orders.LineRequest] | None
            ) -> dict[str, Any]:
    """The new order in its JSON form (what `POST /orders` answers)."""
    return orders.create_order(resources.sessions, resources.broker, resources.cache, user_id,
                               lines).model_dump(mode="json", exclude_none=True)


def test_create_from_items(resources: Any, redis_client: Any) -> None:
    user_id = make_user(resources.sessions, "50.00")
    a = make_game(resources.sessions, price="10.00")
    b = make_game(resources.sessions, price="7.25")
    view = _create(resources, user_id, [orders.LineRequest(a, 2), orders.LineRequest(b, 1),
                                        orders.LineRequest(a, 1)])
    assert view["status"] == "PENDING"
    assert view["total"] == "37.25"
    assert sorted((i["quantity"], i["unit_price"]) for i in view["items"]) == [
        (1, "7.25"), (3, "10.00")]
    assert "keys" not in view
    assert balance(resources.sessions, user_id) == Decimal("12.75")
    with resources.sessions() as s:
        purchase = s.scalars(select(Transaction).where(
            Transaction.order_id == uuid.UUID(view["id"]))).one()
        assert (purchase.type, purchase.amount, purchase.status) == (
            TransactionType.PURCHASE, Decimal("37.25"), TransactionStatus.COMPLETED)
        # dispatched after commit, so the outbox row is gone and the message is queued
        assert s.scalar(select(func.count()).select_from(JobOutbox)) == 0
    assert redis_client.llen("dramatiq:default") >= 1 or redis_client.hlen(
        "dramatiq:default.msgs") >= 1
    assert_invariants(resources)


def test_create_from_cart_clears_it_and_invalidates(resources: Any) -> None:
    user_id = make_user(resources.sessions, "50.00")
    game = make_game(resources.sessions, price="5.00")
    with resources.sessions() as s, s.begin():
        s.add(CartItem(user_id=user_id, game_id=game, quantity=3))
    for key in (keys.user_cart(user_id), keys.user_orders(user_id),
                keys.user_transactions(user_id)):
        resources.cache.set(key, {"stale": True}, 60)
    view = _create(resources, user_id, None)
    assert view["total"] == "15.00"
    with resources.sessions() as s:
        assert s.scalar(select(func.count()).select_from(CartItem)) == 0
    for key in (keys.user_cart(user_id), keys.user_orders(user_id),
                keys.user_transactions(user_id)):
        assert resources.cache.get(key) is None


def test_empty_cart_is_refused(resources: Any) -> None:
    user_id = make_user(resources.sessions, "50.00")
    with pytest.raises(EmptyOrder):
        _create(resources, user_id, None)


def test_insufficient_balance_writes_nothing(resources: Any) -> None:
    user_id = make_user(resources.sessions, "9.99")
    game = make_game(resources.sessions, price="10.00")
    with pytest.raises(InsufficientBalance):
        _create(resources, user_id, [orders.LineRequest(game, 1)])
    assert _counts(resources) == (0, 0, 0)
    assert balance(resources.sessions, user_id) == Decimal("9.99")


@pytest.mark.parametrize("flag", ["inactive", "out_of_stock", "unknown"])
def test_unavailable_game_writes_nothing(resources: Any, flag: str) -> None:
    user_id = make_user(resources.sessions, "50.00")
    good = make_game(resources.sessions, price="1.00")
    bad = uuid.uuid4() if flag == "unknown" else make_game(
        resources.sessions, is_active=flag != "inactive", in_stock=flag != "out_of_stock")
    with resources.sessions() as s, s.begin():
        s.add(CartItem(user_id=user_id, game_id=good, quantity=1))
    with pytest.raises(GameUnavailable):
        _create(resources, user_id, [orders.LineRequest(good, 1), orders.LineRequest(bad, 1)])
    assert _counts(resources) == (0, 0, 0)
    assert balance(resources.sessions, user_id) == Decimal("50.00")
    with resources.sessions() as s:  # the cart is untouched
        assert s.scalar(select(func.count()).select_from(CartItem)) == 1


@pytest.fixture
def purchase_trigger(engine: Any) -> Any:
    """A real Postgres trigger on the PURCHASE insert, installed for one test: the failure
    (or the stall) happens after the order and its items were written in the transaction."""

    def install(body: str) -> None:
        with engine.begin() as conn:
            conn.execute(text(f"""
                CREATE OR REPLACE FUNCTION test_purchase_hook() RETURNS trigger AS $$
                BEGIN {body} RETURN NEW; END $$ LANGUAGE plpgsql;
                CREATE TRIGGER test_purchase_hook BEFORE INSERT ON transactions
                FOR EACH ROW WHEN (NEW.type = 'PURCHASE') EXECUTE FUNCTION test_purchase_hook();
            """))

    yield install
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER IF EXISTS test_purchase_hook ON transactions;"
                          "DROP FUNCTION IF EXISTS test_purchase_hook();"))


def test_constraint_violation_mid_way_rolls_everything_back(
    resources: Any, purchase_trigger: Any
) -> None:
    purchase_trigger("RAISE check_violation USING MESSAGE = 'planted failure';")
    user_id = make_user(resources.sessions, "50.00")
    game = make_game(resources.sessions, price="10.00")
    with pytest.raises(DBAPIError, match="planted failure"):
        _create(resources, user_id, [orders.LineRequest(game, 1)])
    assert _counts(resources) == (0, 0, 0)
    assert balance(resources.sessions, user_id) == Decimal("50.00")
    with resources.sessions() as s:
        assert s.scalar(select(func.count()).select_from(JobOutbox)) == 0


def test_connection_killed_between_statements_leaves_nothing(
    resources: Any, purchase_trigger: Any, engine: Any
) -> None:
    """The request's backend is terminated while it sits between the items insert and the
    PURCHASE insert, as if the process died there."""
    purchase_trigger("PERFORM pg_sleep(30);")
    user_id = make_user(resources.sessions, "50.00")
    game = make_game(resources.sessions, price="10.00")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _create(resources, user_id, [orders.LineRequest(game, 1)])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()

    def purchase_insert_pid() -> int | None:
        with engine.connect() as conn:
            pid: int | None = conn.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'INSERT INTO transactions%'"
                " AND state = 'active'")).scalar()
            return pid

    pid = wait_until(purchase_insert_pid, 10, "the purchase insert started")
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    thread.join(10)
    assert errors and isinstance(errors[0], DBAPIError)
    assert _counts(resources) == (0, 0, 0)
    assert balance(resources.sessions, user_id) == Decimal("50.00")


def test_concurrent_orders_never_overspend(resources: Any) -> None:
    user_id = make_user(resources.sessions, "50.00")
    game = make_game(resources.sessions, price="10.00")
    barrier = threading.Barrier(12)

    def buy(_: int) -> str:
        barrier.wait()
        try:
            _create(resources, user_id, [orders.LineRequest(game, 1)])
            return "ok"
        except InsufficientBalance:
            return "402"

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(buy, range(12)))
    assert outcomes.count("ok") == 5 and outcomes.count("402") == 7
    assert balance(resources.sessions, user_id) == Decimal("0.00")
    assert_invariants(resources)


def test_read_another_users_order_is_not_found(resources: Any) -> None:
    owner = make_user(resources.sessions, "50.00")
    other = make_user(resources.sessions, "50.00")
    game = make_game(resources.sessions, price="10.00")
    view = _create(resources, owner, [orders.LineRequest(game, 1)])
    kek = resources.settings.key_encryption_key.get_secret_value()
    with resources.sessions() as s:
        mine = orders.get_order(s, resources.cache, owner, uuid.UUID(view["id"]),
                                key_encryption_key=kek)
        assert mine.status is OrderStatus.PENDING and mine.keys is None
        with pytest.raises(OrderNotFound):  # now served from the cache: still 404
            orders.get_order(s, resources.cache, other, uuid.UUID(view["id"]),
                             key_encryption_key=kek)
        listing = orders.list_orders(s, resources.cache, other, key_encryption_key=kek)
        assert listing.items == [] and listing.total == 0
