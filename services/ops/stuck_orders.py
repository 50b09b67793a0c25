"""Orders for operators (CONTRACT §8 `keysync orders [--status S] [--stuck]`).

An order is stuck when it is not terminal (PENDING or PROCESSING) longer than
ORDER_STUCK_AFTER_S after it was placed; `stuck_for_s` counts from `created_at`. The reason
is assembled from what keysync records, for the listed page only:
- a dead-lettered `fulfil_order` job for the order (and the error it last recorded);
- the G2A orders of its units as `g2a_purchases` holds them (CREATED = ordered, not paid;
  PAID = paid, key not fetched; …) and the last error G2A gave for one of them;
- a `fulfil_order` job still waiting in the job outbox (the broker refused it).
G2A itself is not called: a list must not spend the G2A rate limit, and what we record is
what fulfilment acts on.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis
import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import (
    G2APurchase,
    G2APurchaseStatus,
    JobOutbox,
    Order,
    OrderItem,
    OrderStatus,
    User,
)
from services.ops.errors import OpsInputError, check_page
from services.ops.schemas import OrderOpsList, OrderOpsView
from worker.enqueue import Actor
from worker.inspect import BrokerInspector

log = structlog.get_logger(__name__)

OPEN = (OrderStatus.PENDING, OrderStatus.PROCESSING)

_G2A_STATE = {
    G2APurchaseStatus.CREATED: "ordered, not paid",
    G2APurchaseStatus.PAID: "paid, key not fetched",
    G2APurchaseStatus.DELIVERED: "key stored",
    G2APurchaseStatus.FAILED: "refused by G2A",
    G2APurchaseStatus.KEY_LOST: "key lost at G2A",
}


@dataclass
class _Evidence:
    g2a_states: Counter[G2APurchaseStatus] = field(default_factory=Counter)
    g2a_error: str | None = None
    dead_letter: str | None = None
    outbox: str | None = None

    def reason(self) -> str:
        parts = []
        if self.dead_letter:
            parts.append(self.dead_letter)
        if self.g2a_error:
            parts.append(f"last G2A error: {self.g2a_error}")
        if self.g2a_states:
            states = ", ".join(f"{self.g2a_states[state]} {label}"  # in lifecycle order
                               for state, label in _G2A_STATE.items() if self.g2a_states[state])
            parts.append(f"G2A orders: {states}")
        else:
            parts.append("no G2A order yet")
        if self.outbox:
            parts.append(self.outbox)
        if not (self.dead_letter or self.g2a_error or self.outbox):
            parts.append("no fulfilment error recorded")
        return "; ".join(parts)


def list_orders(
    session: Session,
    *,
    status: OrderStatus | None = None,
    stuck: bool = False,
    stuck_after_s: int = 900,
    limit: int = 50,
    offset: int = 0,
    broker_redis: redis.Redis | None = None,
    now: datetime | None = None,
) -> OrderOpsList:
    """Orders newest first; with `stuck`, the open ones older than `stuck_after_s`, longest
    stuck first, each with `stuck_for_s` and its `reason`."""
    check_page(limit, offset)
    if stuck_after_s <= 0:
        raise OpsInputError("stuck_after_s must be > 0")
    now = now or datetime.now(UTC)
    where = [] if status is None else [Order.status == status]
    if stuck:
        # Spelled as the partial index `orders_open_created` is, so it serves the query.
        where += [Order.status.in_(OPEN),
                  Order.created_at < now - timedelta(seconds=stuck_after_s)]
    order_by = (Order.created_at.asc(), Order.id) if stuck else (Order.created_at.desc(), Order.id)
    # The page's ids first (an index-only scan of `orders_created_id`, however deep the
    # page), then only its rows: an OFFSET over the joined rows reads every row it skips.
    page = (select(Order.id).where(*where).order_by(*order_by).offset(offset).limit(limit)
            .correlate(None))  # its own scan of orders, not the outer query's row
    rows = session.execute(
        select(Order, User.email).join(User, User.id == Order.user_id)
        .where(Order.id.in_(page)).order_by(*order_by)
    ).all()
    total = session.scalar(select(func.count()).select_from(Order).where(*where)) or 0
    reasons = _reasons(session, [o.id for o, _ in rows], broker_redis) if stuck else {}
    items = [
        OrderOpsView(
            id=order.id, user_email=email, status=order.status, total=order.total,
            created_at=order.created_at, updated_at=order.updated_at,
            stuck_for_s=int((now - order.created_at).total_seconds()) if stuck else None,
            reason=reasons[order.id].reason() if stuck else None,
        )
        for order, email in rows
    ]
    return OrderOpsList(items=items, total=int(total))


def reason(session: Session, order_id: uuid.UUID,
           broker_redis: redis.Redis | None = None) -> str:
    """Why one open order has not finished, as `--stuck` words it (an order's timeline)."""
    return _reasons(session, [order_id], broker_redis)[order_id].reason()


def _reasons(session: Session, order_ids: list[uuid.UUID],
             broker_redis: redis.Redis | None) -> dict[uuid.UUID, _Evidence]:
    evidence = {order_id: _Evidence() for order_id in order_ids}
    if not order_ids:
        return evidence
    purchases = session.execute(
        select(OrderItem.order_id, G2APurchase.status, G2APurchase.last_error)
        .join(G2APurchase, G2APurchase.order_item_id == OrderItem.id)
        .where(OrderItem.order_id.in_(order_ids))
        .order_by(G2APurchase.updated_at, G2APurchase.id)
    ).all()
    for order_id, state, error in purchases:
        evidence[order_id].g2a_states[state] += 1
        if error:
            evidence[order_id].g2a_error = error  # the latest wins (ordered by update)
    by_text = {str(order_id): order_id for order_id in order_ids}
    waiting = session.execute(
        select(JobOutbox.args[0].astext, JobOutbox.created_at, JobOutbox.attempts)
        .where(JobOutbox.actor_name == Actor.FULFIL_ORDER.value,
               JobOutbox.args[0].astext.in_(list(by_text)))
    ).all()
    for arg, created_at, attempts in waiting:
        evidence[by_text[arg]].outbox = (
            f"fulfil_order waiting in the job outbox since {created_at:%Y-%m-%d %H:%M:%S}Z "
            f"({attempts} refused sends)"
        )
    if broker_redis is not None:
        try:
            dead = BrokerInspector(broker_redis).find_dead(Actor.FULFIL_ORDER.value, by_text)
        except redis.RedisError as exc:
            log.warning("dead letters unreadable; stuck reasons without them", error=str(exc))
            dead = {}
        for arg, message in dead.items():
            died = f"{message.failed_at:%Y-%m-%d %H:%M:%S}Z" if message.failed_at else "?"
            evidence[by_text[arg]].dead_letter = (
                f"fulfil_order dead-lettered {died} after {message.retries + 1} attempts"
                + (f": {message.last_error}" if message.last_error else "")
            )
    return evidence
