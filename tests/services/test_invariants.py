"""The invariant checker finds each kind of violation it claims to (planted with raw SQL)."""

from __future__ import annotations

from sqlalchemy import text

from services.invariants import check


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
    assert report.violations["completed_orders_not_refunded"]
    assert report.violations["completed_orders_have_one_key_per_unit"] == []  # no items planted


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
