"""Invariant checker: the evidence that keysync loses nothing and never moves money twice.

Runnable on any keysync database (`keysync check`) and after every fault scenario in the
test suite. Each database check is one SQL query returning the offending rows; an empty
result is a pass. Money is signed by transaction type: TOP_UP and REFUND credit, PURCHASE
debits.

With a Redis client, the cache is checked too: every cached game, cart, wishlist and order
entry present in Redis is recomputed with the very loader the service uses and compared
with the stored JSON; a difference is a stale entry (a lost invalidation). An entry whose
generation counter moves while we compare was being rewritten by a live process and is
not judged.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import redis
from pydantic import JsonValue
from sqlalchemy import text
from sqlalchemy.orm import Session

from services.cache import Cache
from services.cache.service import decode, encode

T = TypeVar("T")

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
        WHERE o.total > 0 AND NOT EXISTS (SELECT 1 FROM transactions t
                          WHERE t.order_id = o.id AND t.type = 'PURCHASE')
    """,
    # A failed or cancelled order gives everything back.
    "refund_equals_purchase": """
        SELECT r.order_id, r.amount, p.amount FROM transactions r
        JOIN transactions p ON p.order_id = r.order_id AND p.type = 'PURCHASE'
        JOIN orders o ON o.id = r.order_id
        WHERE r.type = 'REFUND' AND o.status IN ('FAILED', 'CANCELLED')
          AND r.amount <> p.amount
    """,
    "refunds_only_on_final_orders": """
        SELECT r.order_id, o.status FROM transactions r JOIN orders o ON o.id = r.order_id
        WHERE r.type = 'REFUND' AND o.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')
    """,
    # A COMPLETED order's refund is exactly its undelivered units (none for a full
    # delivery; the rest when G2A refused a unit mid-way), and it delivered something (an
    # order with no key at all must be FAILED, refunded in full).
    "completed_orders_delivered_or_refunded": """
        WITH per_order AS (
            SELECT o.id,
                   COALESCE(SUM(oi.quantity), 0) AS units,
                   COALESCE(SUM(d.keys), 0) AS delivered,
                   COALESCE(SUM((oi.quantity - d.keys) * oi.unit_price), 0) AS undelivered
            FROM orders o
            LEFT JOIN order_items oi ON oi.order_id = o.id
            LEFT JOIN LATERAL (
                SELECT COUNT(*) AS keys FROM g2a_purchases gp
                WHERE gp.order_item_id = oi.id AND gp.status = 'DELIVERED'
                  AND gp.key_encrypted IS NOT NULL) d ON true
            WHERE o.status = 'COMPLETED'
            GROUP BY o.id)
        SELECT p.id, p.units, p.delivered, p.undelivered AS undelivered_amount,
               COALESCE(r.amount, 0) AS refunded
        FROM per_order p
        LEFT JOIN transactions r ON r.order_id = p.id AND r.type = 'REFUND'
                                AND r.status = 'COMPLETED'
        WHERE COALESCE(r.amount, 0) <> p.undelivered OR (p.units > 0 AND p.delivered = 0)
    """,
    "failed_or_cancelled_orders_refunded_once": """
        SELECT o.id, o.status FROM orders o
        WHERE o.status IN ('FAILED', 'CANCELLED')
          AND NOT EXISTS (SELECT 1 FROM transactions t WHERE t.order_id = o.id
                          AND t.type = 'REFUND' AND t.status = 'COMPLETED')
    """,
    "at_most_one_g2a_purchase_per_unit": """
        SELECT order_item_id, unit_index, COUNT(*) FROM g2a_purchases
        GROUP BY order_item_id, unit_index HAVING COUNT(*) > 1
    """,
    # A key kept for a refunded order may lack the pay transaction id: the reconciler
    # confirmed that payment through G2A's order details, which carry none (and G2A hands
    # out keys for paid orders only). Every other key comes from our own pay step.
    "delivered_keys_were_paid": """
        SELECT gp.id, gp.order_item_id, gp.unit_index FROM g2a_purchases gp
        JOIN order_items oi ON oi.id = gp.order_item_id
        JOIN orders o ON o.id = oi.order_id
        WHERE gp.status = 'DELIVERED'
          AND (gp.g2a_order_id IS NULL
               OR (gp.transaction_id IS NULL AND o.status NOT IN ('FAILED', 'CANCELLED')))
    """,
    # G2A was paid for the unit, its order is final, and its key is neither stored nor
    # alerted on (KEY_LOST): nothing is going to fetch it. A PAID unit of a refunded order
    # is fine for a while (fulfilment and the poller fetch it), hence the grace.
    "paid_keys_fetched_or_alerted": """
        SELECT o.id AS order_id, o.status AS order_status, gp.order_item_id, gp.unit_index,
               gp.g2a_order_id
        FROM g2a_purchases gp
        JOIN order_items oi ON oi.id = gp.order_item_id
        JOIN orders o ON o.id = oi.order_id
        WHERE gp.status = 'PAID' AND o.status IN ('COMPLETED', 'FAILED', 'CANCELLED')
          AND GREATEST(gp.updated_at, o.updated_at) < now() - interval '10 minutes'
    """,
    "webhook_events_accounted_for": """
        SELECT event_id, received_at FROM webhook_events
        WHERE processed_at IS NULL AND COALESCE(outcome, '') NOT IN ('orphan', 'dead')
          AND received_at < now() - interval '10 minutes'
    """,
    "no_negative_balances": "SELECT id, balance FROM users WHERE balance < 0",
}


# The part of a check that gives live work time to settle; dropped with grace=False.
_GRACE_CLAUSES: dict[str, str] = {
    "webhook_events_accounted_for": "AND received_at < now() - interval '10 minutes'",
    "paid_keys_fetched_or_alerted":
        "AND GREATEST(gp.updated_at, o.updated_at) < now() - interval '10 minutes'",
}

# Every unit G2A was paid for, by where its key is. Reported, never a violation by itself:
# paid at G2A = delivered + kept for support + awaiting key + key lost. (`--g2a-paid`
# compares the total with G2A's own count: a payment we cannot account for is a violation.)
_G2A_PAID_ACCOUNTING = """
    SELECT
      COUNT(*) FILTER (WHERE gp.status = 'DELIVERED'
                       AND o.status NOT IN ('FAILED', 'CANCELLED')) AS delivered,
      COUNT(*) FILTER (WHERE gp.status = 'DELIVERED'
                       AND o.status IN ('FAILED', 'CANCELLED')) AS kept_for_support,
      COUNT(*) FILTER (WHERE gp.status = 'PAID') AS awaiting_key,
      COUNT(*) FILTER (WHERE gp.status = 'KEY_LOST') AS key_lost
    FROM g2a_purchases gp
    JOIN order_items oi ON oi.id = gp.order_item_id
    JOIN orders o ON o.id = oi.order_id
    WHERE gp.status IN ('PAID', 'DELIVERED', 'KEY_LOST')
"""

# Refunds by kind: whole orders (FAILED/CANCELLED) and the undelivered units of COMPLETED
# orders G2A stopped selling to mid-way (partial deliveries). Reported, never a violation.
_REFUNDS = """
    SELECT
      COUNT(*) FILTER (WHERE o.status IN ('FAILED', 'CANCELLED')) AS whole_orders,
      COALESCE(SUM(r.amount) FILTER (WHERE o.status IN ('FAILED', 'CANCELLED')), 0)
        AS whole_orders_amount,
      COUNT(*) FILTER (WHERE o.status = 'COMPLETED') AS partial_deliveries,
      COALESCE(SUM(r.amount) FILTER (WHERE o.status = 'COMPLETED'), 0)
        AS undelivered_units_amount
    FROM transactions r JOIN orders o ON o.id = r.order_id
    WHERE r.type = 'REFUND' AND r.status = 'COMPLETED'
"""

# Units paid at G2A whose key we do not hold although their order is final: KEY_LOST (the
# alert was raised; an operator recovers the key through G2A support) or PAID (still being
# fetched; a violation once past the grace, see `paid_keys_fetched_or_alerted`).
_PAID_KEYS_NOT_FETCHED = """
    SELECT o.id AS order_id, o.status AS order_status, gp.order_item_id, gp.unit_index,
           gp.g2a_order_id,
           CASE gp.status WHEN 'KEY_LOST' THEN 'key_lost' ELSE 'awaiting_key' END AS state,
           gp.last_error, gp.updated_at
    FROM g2a_purchases gp
    JOIN order_items oi ON oi.id = gp.order_item_id
    JOIN orders o ON o.id = oi.order_id
    WHERE gp.status = 'KEY_LOST'
       OR (gp.status = 'PAID' AND o.status IN ('COMPLETED', 'FAILED', 'CANCELLED'))
    ORDER BY gp.updated_at, gp.id
"""

CACHE_CHECK = "cache_matches_postgres"
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_SESSION = r"[A-Za-z0-9._-]{1,128}"
_CACHED_KEY = re.compile(
    rf"^(?:game:(?P<game>{_UUID})"
    rf"|order:(?P<order>{_UUID})"
    rf"|user:(?P<user>{_UUID}):(?P<user_view>cart|wishlist|orders)"
    rf"|session:(?P<session>{_SESSION}):(?P<session_view>cart|wishlist))$"
)
# SCAN patterns of the families above (`gen:`/`tag:` bookkeeping keys never match them).
_SCAN_PATTERNS = ("game:*", "order:*", "user:*", "session:*")


@dataclass
class InvariantReport:
    # check name -> offending rows, every value as text
    violations: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    checked: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    cache_entries_compared: int = 0
    # paid at G2A = delivered + kept_for_support + awaiting_key + key_lost (and `total`)
    g2a_paid: dict[str, int] = field(default_factory=dict)
    # units paid at G2A, order final, key not held: listed for operators (see the query)
    paid_keys_not_fetched: list[dict[str, str | None]] = field(default_factory=list)
    # whole_orders (+ _amount) and partial_deliveries (+ undelivered_units_amount), as text
    refunds: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "checked": self.checked,
                "violations": {k: v for k, v in self.violations.items() if v},
                "skipped": self.skipped, "cache_entries_compared": self.cache_entries_compared,
                "g2a_paid": self.g2a_paid, "paid_keys_not_fetched": self.paid_keys_not_fetched,
                "refunds": self.refunds}


class _LoadOnly(Cache):
    """A cache that always runs the loader: the service's own read path minus Redis, so a
    recomputed value has exactly the JSON form a fresh cache fill would store."""

    def read_through(self, key: str, ttl_s: int, loader: Callable[[], T]) -> JsonValue:
        return decode(encode(loader()))


class _Missing(Exception):
    """The loader found no row: any cached entry for it is stale."""


def _loader_for(key: str, session: Session, uncached: Cache) -> Callable[[], object] | None:
    """The service read that fills `key`, or None for keys this checker does not cover."""
    from services.cart import service as cart
    from services.cart import wishlist
    from services.cart.service import Owner
    from services.games import service as games
    from services.games.errors import GameNotFound
    from services.orders import queries as orders
    from services.orders.errors import OrderNotFound

    match = _CACHED_KEY.match(key)
    if match is None:
        return None
    if match["game"]:
        game_id = uuid.UUID(match["game"])

        def game() -> object:
            try:
                return games.load_game_view(session, game_id).model_dump(mode="json")
            except GameNotFound:
                raise _Missing(key) from None

        return game
    if match["order"]:
        order_id = uuid.UUID(match["order"])

        def order() -> object:
            try:
                return orders.load_order(session, order_id).to_cache()
            except OrderNotFound:
                raise _Missing(key) from None

        return order
    if match["user"]:
        owner = Owner.user(uuid.UUID(match["user"]))
        view = match["user_view"]
    else:
        owner = Owner.guest(match["session"])
        view = match["session_view"]
    if view == "cart":
        return lambda: cart.get_cart(session, uncached, owner).model_dump(mode="json")
    if view == "wishlist":
        return lambda: wishlist.get_wishlist(session, uncached, owner).model_dump(mode="json")
    user_id = owner.user_id
    assert user_id is not None
    return lambda: orders.load_user_orders(session, user_id).to_cache()


def _first_difference(cached: object, fresh: object, path: str = "") -> str:
    """Where two JSON values part, for a readable violation."""
    if isinstance(cached, dict) and isinstance(fresh, dict):
        for name in sorted(set(cached) | set(fresh)):
            if cached.get(name) != fresh.get(name):
                return _first_difference(cached.get(name), fresh.get(name), f"{path}.{name}")
    if isinstance(cached, list) and isinstance(fresh, list) and len(cached) == len(fresh):
        for i, (a, b) in enumerate(zip(cached, fresh, strict=True)):
            if a != b:
                return _first_difference(a, b, f"{path}[{i}]")
    return f"{path or '.'}: cached {json.dumps(cached)[:200]} != postgres {json.dumps(fresh)[:200]}"


def check_cache(session: Session, client: redis.Redis) -> tuple[list[dict[str, str]], int]:
    """Stale cache entries (key, where they differ) and how many entries were compared.

    Raises redis.RedisError when Redis cannot be read.
    """
    pending = session.execute(text("SELECT COUNT(*) FROM cache_invalidations")).scalar_one()
    session.rollback()
    stale: list[dict[str, str]] = []
    if pending:
        # Reads bypass the cache until the outbox is replayed, so entries are not served;
        # but "after recovery" means the outbox has been drained.
        stale.append({"key": "cache_invalidations", "difference": f"{pending} pending rows"})
    uncached = _LoadOnly(client)
    compared = 0
    for pattern in _SCAN_PATTERNS:
        for raw_key in client.scan_iter(match=pattern, count=1000):
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            loader = _loader_for(key, session, uncached)
            if loader is None:
                continue
            before = client.mget([key, f"gen:{key}"])
            if before[0] is None:
                continue  # expired or invalidated since SCAN saw it
            session.expire_all()  # loaders must see the rows as committed now
            try:
                fresh = loader()
            except _Missing:
                fresh = None
            finally:
                session.rollback()
            compared += 1
            cached = json.loads(before[0])
            if cached == fresh:
                continue
            if client.mget([key, f"gen:{key}"]) != before:
                continue  # rewritten or invalidated while we compared: a live writer
            stale.append({"key": key, "difference": _first_difference(cached, fresh)})
    return stale, compared


def check(session: Session, *, paid_g2a_orders: int | None = None,
          webhook_grace: bool = True, cache_redis: redis.Redis | None = None) -> InvariantReport:
    """Run every check in one read-only transaction.

    `paid_g2a_orders`: the G2A side's count of paid orders (e.g. the simulator's
    `/_sim/stats`), cross-checked against our PAID/DELIVERED/KEY_LOST purchases so a
    payment we do not know about (a double payment) is caught.
    `webhook_grace=False` demands that every stored event is settled, and every paid key of
    a final order fetched or alerted on, now (after a test has drained the queues), not
    only those older than ten minutes.
    `cache_redis`: the cache's Redis; every cached game, cart, wishlist and order entry
    there must equal what its loader computes from Postgres now (and the cache outbox must
    be drained). Unreachable Redis is reported in `skipped`, not as a pass.
    """
    report = InvariantReport()
    with session.begin():
        session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        for name, query in CHECKS.items():
            if not webhook_grace and name in _GRACE_CLAUSES:
                query = query.replace(_GRACE_CLAUSES[name], "")
            rows = session.execute(text(query)).mappings().all()
            report.checked.append(name)
            report.violations[name] = [{k: str(v) for k, v in row.items()} for row in rows]
        paid = session.execute(text(_G2A_PAID_ACCOUNTING)).mappings().one()
        report.g2a_paid = {k: int(v) for k, v in paid.items()}
        report.g2a_paid["total"] = sum(report.g2a_paid.values())
        refunds = session.execute(text(_REFUNDS)).mappings().one()
        report.refunds = {k: str(v) for k, v in refunds.items()}
        report.paid_keys_not_fetched = [
            {k: None if v is None else str(v) for k, v in row.items()}
            for row in session.execute(text(_PAID_KEYS_NOT_FETCHED)).mappings()
        ]
        if paid_g2a_orders is not None:
            ours = report.g2a_paid["total"]
            report.checked.append("g2a_payments_match")
            report.violations["g2a_payments_match"] = (
                [] if ours == paid_g2a_orders
                else [{"ours": str(ours), "g2a": str(paid_g2a_orders)}])
    if cache_redis is not None:
        try:
            stale, compared = check_cache(session, cache_redis)
        except redis.RedisError as exc:
            report.skipped[CACHE_CHECK] = f"redis unreachable: {exc}"
        else:
            report.checked.append(CACHE_CHECK)
            report.violations[CACHE_CHECK] = stale
            report.cache_entries_compared = compared
    return report
