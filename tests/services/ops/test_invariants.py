"""The invariant checker finds each kind of violation it claims to (planted with raw SQL)."""

from __future__ import annotations

from sqlalchemy import text

from services.ops.invariants import check


def _user(engine, balance: str = "0") -> str:
    with engine.begin() as conn:
        return str(
            conn.execute(
                text(
                    "INSERT INTO users (id, email, password_hash, balance) VALUES "
                    "(gen_random_uuid(), gen_random_uuid()::text || '@x.io', 'h', :b) RETURNING id"
                ),
                {"b": balance},
            ).scalar()
        )


def _order(engine, uid: str, status: str, total: str = "10") -> str:
    with engine.begin() as conn:
        oid = str(
            conn.execute(
                text(
                    "INSERT INTO orders (id, user_id, status, total) "
                    "VALUES (gen_random_uuid(), :u, :s, :t) RETURNING id"
                ),
                {"u": uid, "s": status, "t": total},
            ).scalar()
        )
        conn.execute(
            text(
                "INSERT INTO transactions (id, user_id, order_id, type, amount, status) VALUES "
                "(gen_random_uuid(), :u, :o, 'PURCHASE', :t, 'COMPLETED')"
            ),
            {"u": uid, "o": oid, "t": total},
        )
    return oid


def test_clean_database_passes(session) -> None:
    assert check(session).ok


def test_balance_not_backed_by_transactions_is_found(engine, session) -> None:
    _user(engine, "5.00")
    report = check(session)
    assert not report.ok
    assert report.violations["balance_equals_completed_transactions"]


def test_failed_order_without_refund_and_completed_refunded_are_found(engine, session) -> None:
    uid = _user(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO transactions (id, user_id, type, amount, status) VALUES "
                "(gen_random_uuid(), :u, 'TOP_UP', 20, 'COMPLETED')"
            ),
            {"u": uid},
        )
        conn.execute(text("UPDATE users SET balance = 0 WHERE id = :u"), {"u": uid})
    _order(engine, uid, "FAILED")
    done = _order(engine, uid, "COMPLETED")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO transactions (id, user_id, order_id, type, amount, status) "
                "VALUES (gen_random_uuid(), :u, :o, 'REFUND', 10, 'COMPLETED')"
            ),
            {"u": uid, "o": done},
        )
    report = check(session)
    assert report.violations["failed_or_cancelled_orders_refunded_once"]
    # no items planted, nothing undelivered: a refund of 10 is 10 too many
    assert [v["id"] for v in report.violations["completed_orders_delivered_or_refunded"]] == [
        done]


def test_unsettled_webhook_and_payment_mismatch_are_found(engine, session) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO webhook_events (event_id, type, payload) VALUES "
                "('evt_1', 'order.status_changed', '{}')"
            )
        )
    assert check(session).violations["webhook_events_accounted_for"] == []  # within grace
    report = check(session, webhook_grace=False, paid_g2a_orders=1)
    assert report.violations["webhook_events_accounted_for"]
    assert report.violations["g2a_payments_match"] == [{"ours": "0", "g2a": "1"}]


def _unit(engine, order_id: str, status: str, *, transaction_id: str | None) -> str:
    with engine.begin() as conn:
        game = conn.execute(text(
            "INSERT INTO games (id, g2a_product_id, slug, name, price, g2a_price) VALUES "
            "(gen_random_uuid(), gen_random_uuid()::text, gen_random_uuid()::text, 'G', 10, 10)"
            " RETURNING id")).scalar()
        item = conn.execute(text(
            "INSERT INTO order_items (order_id, game_id, quantity, unit_price) "
            "VALUES (:o, :g, 1, 10) RETURNING id"), {"o": order_id, "g": game}).scalar()
        conn.execute(text(
            "INSERT INTO g2a_purchases (order_item_id, unit_index, g2a_order_id, status, "
            "transaction_id, key_encrypted) VALUES (:i, 0, gen_random_uuid()::text, :s, :t, "
            "CAST(:k AS bytea))"),
            {"i": item, "s": status, "t": transaction_id,
             "k": b"k" if status == "DELIVERED" else None})
    return str(item)


def test_delivered_key_without_payment_is_found_unless_kept_for_a_refunded_order(
    engine, session
) -> None:
    uid = _user(engine)
    completed = _order(engine, uid, "COMPLETED")
    unpaid = _unit(engine, completed, "DELIVERED", transaction_id=None)
    refunded = _order(engine, uid, "CANCELLED")
    # paid as the reconciler records it (G2A's order details carry no transaction id)
    _unit(engine, refunded, "DELIVERED", transaction_id=None)
    report = check(session)
    assert [v["order_item_id"] for v in report.violations["delivered_keys_were_paid"]] == [
        unpaid]
    assert report.g2a_paid == {"delivered": 1, "kept_for_support": 1, "awaiting_key": 0,
                               "key_lost": 0, "total": 2}


def test_paid_unit_of_a_final_order_without_key_or_alert_is_found(engine, session) -> None:
    uid = _user(engine)
    waiting = _order(engine, uid, "FAILED")
    _unit(engine, waiting, "PAID", transaction_id="tx-1")
    alerted = _order(engine, uid, "CANCELLED")
    _unit(engine, alerted, "KEY_LOST", transaction_id="tx-2")
    live = _order(engine, uid, "PROCESSING")  # key not ready yet: normal, not listed
    _unit(engine, live, "PAID", transaction_id="tx-3")
    report = check(session)
    assert report.violations["paid_keys_fetched_or_alerted"] == []  # within the grace
    assert sorted((u["order_id"], u["state"]) for u in report.paid_keys_not_fetched) == sorted(
        [(waiting, "awaiting_key"), (alerted, "key_lost")])
    with engine.begin() as conn:
        conn.execute(text("UPDATE g2a_purchases SET updated_at = now() - interval '11 min'"))
        conn.execute(text("UPDATE orders SET updated_at = now() - interval '11 min'"))
    report = check(session)
    assert [v["order_id"] for v in report.violations["paid_keys_fetched_or_alerted"]] == [waiting]
    assert report.g2a_paid["awaiting_key"] == 2 and report.g2a_paid["key_lost"] == 1


def _refund(engine, uid: str, order_id: str, amount: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO transactions (id, user_id, order_id, type, amount, status) VALUES "
            "(gen_random_uuid(), :u, :o, 'REFUND', :a, 'COMPLETED')"),
            {"u": uid, "o": order_id, "a": amount})


def _item_without_unit(engine, order_id: str) -> None:
    with engine.begin() as conn:
        game = conn.execute(text(
            "INSERT INTO games (id, g2a_product_id, slug, name, price, g2a_price) VALUES "
            "(gen_random_uuid(), gen_random_uuid()::text, gen_random_uuid()::text, 'G', 10, 10)"
            " RETURNING id")).scalar()
        conn.execute(text(
            "INSERT INTO order_items (order_id, game_id, quantity, unit_price) "
            "VALUES (:o, :g, 1, 10)"), {"o": order_id, "g": game})


def test_partial_delivery_refund_must_equal_the_undelivered_units(engine, session) -> None:
    """A COMPLETED order with one of two keys: its one REFUND is the missing unit's price,
    no more, no less; with no key at all it should have been FAILED."""
    uid = _user(engine)
    right = _order(engine, uid, "COMPLETED", total="20")
    _unit(engine, right, "DELIVERED", transaction_id="tx-1")
    _item_without_unit(engine, right)
    _refund(engine, uid, right, "10")
    short = _order(engine, uid, "COMPLETED", total="20")
    _unit(engine, short, "DELIVERED", transaction_id="tx-2")
    _item_without_unit(engine, short)
    _refund(engine, uid, short, "5")
    missing = _order(engine, uid, "COMPLETED", total="20")  # a key short, nothing refunded
    _unit(engine, missing, "DELIVERED", transaction_id="tx-3")
    _item_without_unit(engine, missing)
    nothing = _order(engine, uid, "COMPLETED", total="10")  # no key at all, fully refunded
    _item_without_unit(engine, nothing)
    _refund(engine, uid, nothing, "10")
    live = _order(engine, uid, "PROCESSING")
    _refund(engine, uid, live, "10")
    report = check(session)
    found = {v["id"] for v in report.violations["completed_orders_delivered_or_refunded"]}
    assert found == {short, missing, nothing}
    assert [v["order_id"] for v in report.violations["refunds_only_on_final_orders"]] == [live]
    assert report.violations["refund_equals_purchase"] == []  # only FAILED/CANCELLED
    assert report.refunds["partial_deliveries"] == "3"  # right, short, nothing
    assert report.g2a_paid["delivered"] == 3
