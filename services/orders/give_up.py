"""Giving up: a live order whose fulfilment could not start in time fails, refunded.

An order not terminal `GiveUp.after_s` (FULFILMENT_GIVE_UP_S) after it was placed, with a
unit still unpaid at G2A (its fulfilment never got going: G2A down, refusing, no worker),
fails with a full refund through `order_status.apply`, logged at error with
`alert=order_gave_up`. Decided twice: once over the candidates, again under the order lock.
Units already paid at G2A are not dropped: fulfilment sees the refunded order and fetches and
keeps their keys (the poller resumes it when no chain is alive). Orders whose every unit is
paid only wait for keys and never give up here (G2A has the money).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import redis
import structlog
from prometheus_client import Counter
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import G2APurchase, G2APurchaseStatus, Order, OrderItem, OrderStatus
from services.cache import Cache
from services.orders import status as order_status
from services.orders.chains import FulfilmentChains

log = structlog.get_logger(__name__)

ORDERS_GAVE_UP = Counter(
    "keysync_orders_gave_up_total",
    "Orders failed with a full refund because fulfilment could not start within "
    "FULFILMENT_GIVE_UP_S (alert=order_gave_up)",
)

# Units G2A has been paid for: their order's fulfilment has started.
_PAID = (G2APurchaseStatus.PAID, G2APurchaseStatus.DELIVERED)


@dataclass(frozen=True)
class GiveUp:
    """Fail orders whose fulfilment could not start within `after_s` (FULFILMENT_GIVE_UP_S);
    `cache` is invalidated after each commit."""

    after_s: float
    cache: Cache

    def __post_init__(self) -> None:
        if self.after_s <= 0:
            raise ValueError(f"give-up time must be positive, got {self.after_s}")


def give_up_stalled(
    sessions: sessionmaker[Session], chains: FulfilmentChains | None, give_up: GiveUp,
    *, limit: int,
) -> list[tuple[uuid.UUID, bool]]:
    """Fail (with a full refund) live orders placed more than `give_up.after_s` ago that
    still have a unit G2A was not paid for. Each order given up, and whether it has paid
    units awaiting their key (a fulfilment run then fetches and keeps them)."""
    units = (
        select(OrderItem.order_id, func.sum(OrderItem.quantity).label("units"))
        .group_by(OrderItem.order_id)
        .subquery()
    )
    paid = (
        select(OrderItem.order_id, func.count().label("paid"))
        .join(G2APurchase, G2APurchase.order_item_id == OrderItem.id)
        .where(G2APurchase.status.in_(_PAID))
        .group_by(OrderItem.order_id)
        .subquery()
    )
    with sessions() as session:
        candidates = list(session.scalars(
            select(Order.id)
            .join(units, units.c.order_id == Order.id)
            .outerjoin(paid, paid.c.order_id == Order.id)
            .where(
                Order.status.in_([OrderStatus.PENDING, OrderStatus.PROCESSING]),
                Order.created_at
                < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, give_up.after_s),
                func.coalesce(paid.c.paid, 0) < units.c.units,
            )
            .order_by(Order.created_at)
            .limit(limit)
        ))
    return [
        (order_id, _awaiting_keys(sessions, order_id))
        for order_id in candidates
        if _give_up_one(sessions, chains, give_up, order_id)
    ]


def _give_up_one(
    sessions: sessionmaker[Session], chains: FulfilmentChains | None, give_up: GiveUp,
    order_id: uuid.UUID,
) -> bool:
    with sessions() as session, session.begin():
        # Decided again under the order lock: fulfilment may have paid the last unit, or
        # finished, since the candidates were read.
        order = order_status.lock_order(session, order_id)
        if order is None or order.status in order_status.TERMINAL:
            return False
        by_status: dict[G2APurchaseStatus, int] = {
            status: int(count)
            for status, count in session.execute(
                select(G2APurchase.status, func.count())
                .join(OrderItem, OrderItem.id == G2APurchase.order_item_id)
                .where(OrderItem.order_id == order_id)
                .group_by(G2APurchase.status)
            )
        }
        units = int(session.scalar(
            select(func.coalesce(func.sum(OrderItem.quantity), 0))
            .where(OrderItem.order_id == order_id)
        ) or 0)
        paid_units = sum(by_status.get(s, 0) for s in _PAID)
        if paid_units >= units:
            return False
        age_s = float(session.scalar(
            select(func.extract("epoch", func.now() - Order.created_at))
            .where(Order.id == order_id)
        ) or 0)
        if age_s < give_up.after_s:
            return False
        stored_error = session.scalar(
            select(G2APurchase.last_error)
            .join(OrderItem, OrderItem.id == G2APurchase.order_item_id)
            .where(OrderItem.order_id == order_id, G2APurchase.last_error.is_not(None))
            .order_by(G2APurchase.updated_at.desc())
            .limit(1)
        )
        transition = order_status.apply(
            session, order_id, OrderStatus.FAILED, source="give_up", order=order
        )
    if transition is None or not transition.changed:
        return False
    give_up.cache.invalidate(transition.cache_keys)
    ORDERS_GAVE_UP.inc()
    log.error(
        "ALERT order gave up: fulfilment could not start in time; failed with a full refund",
        alert="order_gave_up",
        order_id=str(order_id),
        age_s=round(age_s),
        give_up_after_s=give_up.after_s,
        last_error=_last_error(chains, order_id) or stored_error or "none recorded",
        units=units,
        # Paid at G2A before giving up: their keys are still fetched and kept for support.
        paid_units=paid_units,
        awaiting_key=int(by_status.get(G2APurchaseStatus.PAID, 0)),
        refunded=transition.refunded,
    )
    return True


def _awaiting_keys(sessions: sessionmaker[Session], order_id: uuid.UUID) -> bool:
    with sessions() as session:
        return bool(session.scalar(
            select(func.count())
            .select_from(G2APurchase)
            .join(OrderItem, OrderItem.id == G2APurchase.order_item_id)
            .where(OrderItem.order_id == order_id,
                   G2APurchase.status == G2APurchaseStatus.PAID)
        ))


def _last_error(chains: FulfilmentChains | None, order_id: uuid.UUID) -> str | None:
    if chains is None:
        return None
    try:
        return chains.last_error(order_id)
    except redis.RedisError:
        return None
