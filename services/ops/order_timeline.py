"""One order as support sees it (the console's order page, `GET /admin/api/orders/{id}`):
the order, its items, and in time order its transactions, the G2A purchases of its units
with their states and errors, and the webhook events about it.

No game key ever leaves here, not even masked: `key_encrypted` is never selected, and the
views have no field one could land in. A webhook event is about the order when it names
it (`data.order_id`) or one of its G2A orders (`data.external_order_id`), the two ways
`services.webhooks` finds an event's order; both are indexed expressions.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

import redis
from sqlalchemy import String, func, literal_column, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnClause

from db.models import (
    G2APurchase,
    G2APurchaseStatus,
    Game,
    Order,
    OrderItem,
    Transaction,
    TransactionType,
    User,
    WebhookEvent,
)
from services.ops.schemas import (
    G2APurchaseEntry,
    OrderTimeline,
    TimelineEntry,
    TimelineItem,
    TimelineOrder,
    TransactionEntry,
    WebhookEntry,
)
from services.ops.stuck_orders import OPEN, reason
from services.ops.webhook_inbox import event_view
from services.orders.errors import OrderNotFound

# An order sees a handful of events; a client resending one forever must not make the
# page unbounded.
MAX_WEBHOOK_EVENTS = 200

# Spelled exactly as the expression indexes of migration 0003 are, so they serve the query.
EVENT_ORDER_ID: ColumnClause[str] = literal_column(
    "((payload -> 'data'::text) ->> 'order_id'::text)", String)
EVENT_EXTERNAL_ORDER_ID: ColumnClause[str] = literal_column(
    "((payload -> 'data'::text) ->> 'external_order_id'::text)", String)


def timeline(session: Session, order_id: uuid.UUID, *,
             broker_redis: redis.Redis | None = None) -> OrderTimeline:
    """The order's timeline; `OrderNotFound` when there is no such order. An open order
    also says what keeps it from finishing (dead letters are read from `broker_redis`)."""
    found = session.execute(
        select(Order, User.email).join(User, User.id == Order.user_id).where(Order.id == order_id)
    ).one_or_none()
    if found is None:
        raise OrderNotFound("No such order.")
    order, email = found
    transactions = session.scalars(
        select(Transaction).where(Transaction.order_id == order_id)
        .order_by(Transaction.created_at, Transaction.id)
    ).all()
    purchases = session.execute(
        select(G2APurchase.id, G2APurchase.created_at, G2APurchase.updated_at,
               G2APurchase.order_item_id, G2APurchase.unit_index, G2APurchase.g2a_order_id,
               G2APurchase.status, G2APurchase.price, G2APurchase.last_error)
        .join(OrderItem, OrderItem.id == G2APurchase.order_item_id)
        .where(OrderItem.order_id == order_id)
        .order_by(G2APurchase.created_at, G2APurchase.id)
    ).all()
    entries: list[TimelineEntry] = [
        TransactionEntry(at=t.created_at, type=t.type, amount=t.amount, status=t.status)
        for t in transactions
    ]
    entries += [
        G2APurchaseEntry(at=p.created_at, updated_at=p.updated_at, order_item_id=p.order_item_id,
                         unit_index=p.unit_index, g2a_order_id=p.g2a_order_id, status=p.status,
                         price=p.price, last_error=p.last_error)
        for p in purchases
    ]
    entries += _webhook_entries(session, order_id,
                                [p.g2a_order_id for p in purchases if p.g2a_order_id])
    entries.sort(key=_when)
    refunded = sum((t.amount for t in transactions if t.type is TransactionType.REFUND),
                   Decimal("0.00"))
    return OrderTimeline(
        order=TimelineOrder(id=order.id, user_email=email, status=order.status,
                            total=order.total, refunded=refunded, created_at=order.created_at,
                            updated_at=order.updated_at),
        items=_items(session, order_id),
        entries=entries,
        reason=reason(session, order_id, broker_redis) if order.status in OPEN else None,
    )


def _when(entry: TimelineEntry) -> datetime:
    return entry.at


def _items(session: Session, order_id: uuid.UUID) -> list[TimelineItem]:
    stored = (
        select(func.count()).where(G2APurchase.order_item_id == OrderItem.id,
                                   G2APurchase.status == G2APurchaseStatus.DELIVERED)
        .scalar_subquery()
    )
    rows = session.execute(
        select(OrderItem.id, OrderItem.game_id, Game.name, OrderItem.quantity,
               OrderItem.unit_price, stored)
        .join(Game, Game.id == OrderItem.game_id)
        .where(OrderItem.order_id == order_id).order_by(OrderItem.id)
    ).all()
    return [TimelineItem(id=item_id, game_id=game_id, game_name=name, quantity=quantity,
                         unit_price=unit_price, keys_stored=keys)
            for item_id, game_id, name, quantity, unit_price, keys in rows]


def _webhook_entries(session: Session, order_id: uuid.UUID,
                     g2a_order_ids: list[str]) -> list[WebhookEntry]:
    about = [EVENT_ORDER_ID == str(order_id)]  # noqa: SIM300 (a SQL column, not a constant)
    if g2a_order_ids:
        about.append(EVENT_EXTERNAL_ORDER_ID.in_(g2a_order_ids))
    events = session.scalars(
        select(WebhookEvent).where(or_(*about))
        .order_by(WebhookEvent.received_at, WebhookEvent.id).limit(MAX_WEBHOOK_EVENTS)
    ).all()
    entries = []
    for event in events:
        view = event_view(event)
        entries.append(WebhookEntry(
            at=view.received_at, event_id=view.event_id, type=view.type, status=view.status,
            outcome=view.outcome, processed_at=view.processed_at, attempts=view.attempts,
            last_error=view.last_error,
        ))
    return entries
