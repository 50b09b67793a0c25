"""Invariant checker: the evidence that keysync loses nothing and never moves money twice.

Runnable on any keysync database (`keysync check`) and after every fault scenario in the
test suite. Each check is one SQL query returning the offending rows; an empty result is
a pass. Money is signed by transaction type: TOP_UP and REFUND credit, PURCHASE debits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

CHECKS: dict[str, str] = {
    "balance_equals_completed_transactions": """
        SELECT u.id, u.balance, COALESCE(SUM(CASE t.type WHEN 'PURCHASE' THEN -t.amount
                                                   ELSE t.amount END), 0) AS ledger
        FROM users u
        LEFT JOIN transactions t ON t.user_id = u.id AND t.status = 'COMPLETED'
        GROUP BY u.id, u.balance
        HAVING u.balance <> COALESCE(SUM(CASE t.type WHEN 'PURCHASE' THEN -t.amount
                                              ELSE t.amount END), 0)
    """,
    "at_most_one_purchase_and_refund_per_order": """
        SELECT order_id, type, COUNT(*) FROM transactions
        WHERE order_id IS NOT NULL AND type IN ('PURCHASE', 'REFUND')
        GROUP BY order_id, type HAVING COUNT(*) > 1
    """,
    "every_order_has_one_purchase": """
        SELECT o.id FROM orders o
        WHERE NOT EXISTS (SELECT 1 FROM transactions t
                          WHERE t.order_id = o.id AND t.type = 'PURCHASE')
    """,
    "refund_equals_purchase": """
        SELECT r.order_id, r.amount, p.amount FROM transactions r
        JOIN transactions p ON p.order_id = r.order_id AND p.type = 'PURCHASE'
        WHERE r.type = 'REFUND' AND r.amount <> p.amount
    """,
    "completed_orders_not_refunded": """
        SELECT o.id FROM orders o JOIN transactions t ON t.order_id = o.id AND t.type = 'REFUND'
        WHERE o.status = 'COMPLETED'
    """,
    "failed_or_cancelled_orders_refunded_once": """
        SELECT o.id, o.status FROM orders o
        WHERE o.status IN ('FAILED', 'CANCELLED')
          AND NOT EXISTS (SELECT 1 FROM transactions t WHERE t.order_id = o.id
                          AND t.type = 'REFUND' AND t.status = 'COMPLETED')
    """,
    "completed_orders_have_one_key_per_unit": """
        SELECT o.id, SUM(oi.quantity) AS units,
               (SELECT COUNT(*) FROM g2a_purchases gp JOIN order_items i ON i.id = gp.order_item_id
                WHERE i.order_id = o.id AND gp.status = 'DELIVERED'
                  AND gp.key_encrypted IS NOT NULL) AS keys
        FROM orders o JOIN order_items oi ON oi.order_id = o.id
        WHERE o.status = 'COMPLETED'
        GROUP BY o.id
        HAVING SUM(oi.quantity) <> (SELECT COUNT(*) FROM g2a_purchases gp
                                    JOIN order_items i ON i.id = gp.order_item_id
                                    WHERE i.order_id = o.id AND gp.status = 'DELIVERED'
                                      AND gp.key_encrypted IS NOT NULL)
    """,
    "at_most_one_g2a_purchase_per_unit": """
        SELECT order_item_id, unit_index, COUNT(*) FROM g2a_purchases
        GROUP BY order_item_id, unit_index HAVING COUNT(*) > 1
    """,
    "webhook_events_accounted_for": """
        SELECT event_id, received_at FROM webhook_events
        WHERE processed_at IS NULL AND COALESCE(outcome, '') NOT IN ('orphan', 'dead')
          AND received_at < now() - interval '10 minutes'
    """,
    "no_negative_balances": "SELECT id, balance FROM users WHERE balance < 0",
}


@dataclass
class InvariantReport:
    violations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked,
                "violations": {k: v for k, v in self.violations.items() if v}}


def check(session: Session, *, paid_g2a_orders: int | None = None,
          webhook_grace: bool = True) -> InvariantReport:
    """Run every check in one read-only transaction.

    `paid_g2a_orders`: the G2A side's count of paid orders (e.g. the simulator's
    `/_sim/stats`), cross-checked against our PAID/DELIVERED/KEY_LOST purchases so a
    payment we do not know about (a double payment) is caught.
    `webhook_grace=False` demands that every stored event is settled now (after a test
    has drained the queues), not only those older than ten minutes.
    """
    report = InvariantReport()
    with session.begin():
        session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        for name, query in CHECKS.items():
            if name == "webhook_events_accounted_for" and not webhook_grace:
                query = query.replace("AND received_at < now() - interval '10 minutes'", "")
            rows = session.execute(text(query)).mappings().all()
            report.checked.append(name)
            report.violations[name] = [{k: str(v) for k, v in row.items()} for row in rows]
        if paid_g2a_orders is not None:
            ours = session.execute(text(
                "SELECT COUNT(*) FROM g2a_purchases WHERE status IN ('PAID', 'DELIVERED', "
                "'KEY_LOST')")).scalar_one()
            report.checked.append("g2a_payments_match")
            report.violations["g2a_payments_match"] = (
                [] if ours == paid_g2a_orders
                else [{"ours": str(ours), "g2a": str(paid_g2a_orders)}])
    return report
