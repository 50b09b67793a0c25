"""The status poller: the real G2A Export API pushes nothing, so we ask.

Every run looks at orders that should be moving but have been quiet for `min_age_s`:
- PENDING orders (their fulfilment job was lost after leaving the outbox, e.g. a worker
  killed mid-message): fulfilment is queued;
- PROCESSING orders: for each CREATED/PAID G2A purchase, `GET /v1/order/details` tells
  whether G2A is done. A paid-and-complete order (key ready), an unpaid order (we stopped
  before paying) or a unit with no purchase yet all mean "resume": fulfilment is queued;
- FAILED/CANCELLED orders with PAID units (G2A was paid, then the order was refunded before
  the key came): once G2A says the key is ready, fulfilment is queued to fetch and keep it;
- FAILED/CANCELLED orders with CREATED units whose pay call had an unknown outcome: if G2A
  did take the money the unit is recorded PAID and fulfilment is queued for its key.

Resuming goes through the same idempotent `fulfil_order` job (and, through it, the same
`order_status.apply`) as webhooks, so the poller cannot do anything a duplicate webhook
could not. A "pending" answer (paid, key not ready) needs nothing.

With `chains` (the scheduled poller always passes them) an order whose fulfilment chain is
alive is left to it, without a G2A call, and a resume claims the order's chain lease before
it is queued: the poller never starts a second chain next to a live one
(`services.orders.chains`).

With `give_up`, orders first: those whose fulfilment could not start in time fail with a
full refund (`services.orders.give_up`); the keys of their units already paid at G2A are
fetched by a fulfilment run resumed here when no chain is alive. Orders whose every unit is
paid only wait for keys and never give up (G2A has the money); `ORDER_STUCK_AFTER_S` shows
them to operators.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import dramatiq
import redis
import structlog
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import G2APurchase, G2APurchaseStatus, Order, OrderItem, OrderStatus
from services.g2a import G2AClient, G2AError, G2AOrderNotFound
from services.orders.chains import START_LEASE_MS, FulfilmentChains, new_token
from services.orders.give_up import GiveUp, give_up_stalled
from services.orders.status import REFUNDING
from worker.enqueue import Actor, enqueue

log = structlog.get_logger(__name__)


@dataclass
class PollResult:
    checked_orders: int = 0
    details_calls: int = 0
    resumed: list[uuid.UUID] = field(default_factory=list)
    errors: int = 0
    # G2A orders found paid although their (refunded) order stopped before recording it
    paid_after_refund: list[str] = field(default_factory=list)
    # orders left alone because their fulfilment chain is alive
    chains_alive: list[uuid.UUID] = field(default_factory=list)
    # orders failed (and refunded) because fulfilment could not start in time
    gave_up: list[uuid.UUID] = field(default_factory=list)


def _age_cutoff(min_age_s: float) -> object:
    return func.now() - func.make_interval(0, 0, 0, 0, 0, 0, min_age_s)


def poll_order_status(
    sessions: sessionmaker[Session],
    g2a: G2AClient,
    broker: dramatiq.Broker,
    *,
    chains: FulfilmentChains | None = None,
    give_up: GiveUp | None = None,
    min_age_s: float = 60,
    limit: int = 100,
) -> PollResult:
    result = PollResult()
    cutoff = _age_cutoff(min_age_s)
    if give_up is not None:
        for order_id, awaiting_keys in give_up_stalled(sessions, chains, give_up, limit=limit):
            result.gave_up.append(order_id)
            # `_start_chains` skips it if the live chain will do it (its next run sees
            # the refund and keeps the paid keys); otherwise a new run fetches them.
            if awaiting_keys and order_id not in result.resumed:
                result.resumed.append(order_id)
    with sessions() as session, session.begin():
        stale = session.execute(
            select(Order.id, Order.status)
            .where(
                Order.status.in_([OrderStatus.PENDING, OrderStatus.PROCESSING]),
                Order.updated_at < cutoff,
            )
            .order_by(Order.updated_at)
            .limit(limit)
        ).all()
        units: dict[uuid.UUID, int] = {
            order_id: int(quantity)
            for order_id, quantity in session.execute(
                select(OrderItem.order_id, func.sum(OrderItem.quantity))
                .where(OrderItem.order_id.in_([oid for oid, _ in stale]))
                .group_by(OrderItem.order_id)
            )
        }
        purchases = session.execute(
            select(OrderItem.order_id, G2APurchase.g2a_order_id, G2APurchase.status)
            .join(OrderItem, OrderItem.id == G2APurchase.order_item_id)
            .where(OrderItem.order_id.in_([oid for oid, _ in stale]))
        ).all()
    by_order: dict[uuid.UUID, list[tuple[str | None, G2APurchaseStatus]]] = {}
    for order_id, g2a_order_id, unit_status in purchases:
        by_order.setdefault(order_id, []).append((g2a_order_id, unit_status))

    alive = _alive(chains, [oid for oid, _ in stale])
    for order_id, status in stale:
        if order_id in alive:
            result.chains_alive.append(order_id)  # the chain comes back on its own
            continue
        result.checked_orders += 1
        rows = by_order.get(order_id, [])
        bound = log.bind(order_id=str(order_id))
        if status is OrderStatus.PENDING or len(rows) < int(units.get(order_id, 0)):
            reason = "pending order" if status is OrderStatus.PENDING else "units not ordered"
        else:
            reason = _check_g2a(g2a, rows, result, bound)
        if reason:
            bound.info("poller resumes fulfilment", reason=reason)
            result.resumed.append(order_id)

    _resume_paid_refunded(sessions, g2a, result, chains, cutoff=cutoff, limit=limit)
    _reconcile_refunded(sessions, g2a, result, limit=limit)
    _start_chains(sessions, broker, chains, result)
    if result.checked_orders or result.gave_up or result.chains_alive:
        log.info(
            "order status poll",
            checked=result.checked_orders,
            details_calls=result.details_calls,
            resumed=len(result.resumed),
            chains_alive=len(result.chains_alive),
            gave_up=len(result.gave_up),
            errors=result.errors,
        )
    return result


def _alive(chains: FulfilmentChains | None, order_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    if chains is None:
        return set()
    try:
        return chains.alive(order_ids)
    except redis.RedisError as exc:
        # Without the leases every stale order looks chainless; its message then runs
        # unguarded and does not re-send itself (`FulfilmentChains.run`), so one message
        # per order and poll is the most this costs.
        log.warning("fulfilment chain leases unavailable", error=str(exc))
        return set()


def _start_chains(
    sessions: sessionmaker[Session], broker: dramatiq.Broker,
    chains: FulfilmentChains | None, result: PollResult,
) -> None:
    """Queue `fulfil_order` for each resumed order, as a new chain holding its lease.

    An order whose lease is taken meanwhile (a chain started since we looked) is moved from
    `resumed` to `chains_alive`: never a second chain."""
    if not result.resumed:
        return
    tokens: dict[uuid.UUID, str | None] = {}
    for order_id in result.resumed:
        token: str | None = None
        if chains is not None:
            token = new_token()
            try:
                if not chains.claim(order_id, token, START_LEASE_MS):
                    if order_id not in result.chains_alive:
                        result.chains_alive.append(order_id)
                    continue
            except redis.RedisError as exc:
                log.warning("fulfilment chain lease unavailable; resuming unguarded",
                            order_id=str(order_id), error=str(exc))
                token = None
        tokens[order_id] = token
    result.resumed = list(tokens)
    if not tokens:
        return
    with sessions() as session, session.begin():
        for order_id, token in tokens.items():
            enqueue(session, broker, Actor.FULFIL_ORDER, str(order_id), token)


def _check_g2a(
    g2a: G2AClient,
    rows: list[tuple[str | None, G2APurchaseStatus]],
    result: PollResult,
    bound: structlog.typing.FilteringBoundLogger,
) -> str:
    """Why fulfilment should resume for this PROCESSING order, or "" to leave it alone."""
    for g2a_order_id, status in rows:
        if status not in (G2APurchaseStatus.CREATED, G2APurchaseStatus.PAID):
            continue
        if g2a_order_id is None:
            continue
        try:
            result.details_calls += 1
            details = g2a.order_details(g2a_order_id)
        except G2AOrderNotFound:
            bound.warning("g2a does not know a stored order", g2a_order_id=g2a_order_id)
            result.errors += 1
            continue
        except G2AError as exc:
            bound.info("g2a details failed; next poll", error_code=exc.code)
            result.errors += 1
            continue
        g2a_status = details.status.lower()
        if status is G2APurchaseStatus.CREATED:
            # Unpaid on our side: either G2A says "new" (we stopped before paying) or it
            # was paid and we died before recording it; paying again is idempotent.
            return f"created unit, g2a says {g2a_status}"
        if g2a_status == "complete":
            return "key ready"
    return ""


def _resume_paid_refunded(
    sessions: sessionmaker[Session], g2a: G2AClient, result: PollResult,
    chains: FulfilmentChains | None, *, cutoff: object, limit: int,
) -> None:
    """Resume refunded orders that still have PAID units: their keys are paid for.

    Fulfilment fetches and keeps such keys itself when it sees the refund; this is the
    backstop when that run ended PENDING (key not ready, G2A unavailable) and its delayed
    retries ran out. Only units whose key G2A reports ready are resumed, so a slow key costs
    one details call per poll, not a fulfilment run.
    """
    with sessions() as session, session.begin():
        rows = session.execute(
            select(OrderItem.order_id, G2APurchase.g2a_order_id)
            .join(OrderItem, OrderItem.id == G2APurchase.order_item_id)
            .join(Order, Order.id == OrderItem.order_id)
            .where(
                Order.status.in_(list(REFUNDING)),
                Order.updated_at < cutoff,
                G2APurchase.status == G2APurchaseStatus.PAID,
                G2APurchase.g2a_order_id.is_not(None),
            )
            .order_by(OrderItem.order_id, G2APurchase.id)
            .limit(limit)
        ).all()
    by_order: dict[uuid.UUID, list[tuple[str | None, G2APurchaseStatus]]] = {}
    for order_id, g2a_order_id in rows:
        by_order.setdefault(order_id, []).append((g2a_order_id, G2APurchaseStatus.PAID))
    alive = _alive(chains, list(by_order))
    for order_id, paid in by_order.items():
        if order_id in alive:
            if order_id not in result.chains_alive:
                result.chains_alive.append(order_id)
            continue
        result.checked_orders += 1
        bound = log.bind(order_id=str(order_id))
        if _check_g2a(g2a, paid, result, bound) and order_id not in result.resumed:
            bound.info("poller resumes fulfilment", reason="paid key of a refunded order")
            result.resumed.append(order_id)


def _reconcile_refunded(
    sessions: sessionmaker[Session], g2a: G2AClient, result: PollResult, *, limit: int
) -> None:
    """Record G2A payments we could not confirm before the order was refunded.

    A pay call that timed out may still have charged us; if the order is then FAILED or
    CANCELLED (a webhook, another unit out of stock), fulfilment never pays again and the
    unit stays CREATED. The customer's money is already right (refunded once); this keeps
    our record of what G2A charged true (PAID) and resumes fulfilment, which fetches and
    keeps the key (or raises `alert=g2a_paid_after_refund` when G2A will not hand it out).
    Only recent rows are looked at, so an unpaid leftover is not polled forever.
    """
    with sessions() as session, session.begin():
        rows = session.execute(
            select(G2APurchase.id, G2APurchase.g2a_order_id, OrderItem.order_id)
            .join(OrderItem, OrderItem.id == G2APurchase.order_item_id)
            .join(Order, Order.id == OrderItem.order_id)
            .where(
                Order.status.in_(list(REFUNDING)),
                G2APurchase.status == G2APurchaseStatus.CREATED,
                G2APurchase.g2a_order_id.is_not(None),
                G2APurchase.created_at > func.now() - func.make_interval(0, 0, 0, 1),
            )
            .limit(limit)
        ).all()
    for row_id, g2a_order_id, order_id in rows:
        try:
            result.details_calls += 1
            details = g2a.order_details(str(g2a_order_id))
        except G2AError as exc:
            log.info("g2a details failed; next poll", order_id=str(order_id),
                     error_code=exc.code)
            result.errors += 1
            continue
        if details.status.lower() == "new":
            continue  # never paid: an unpaid G2A order costs nothing
        with sessions() as session, session.begin():
            session.execute(
                update(G2APurchase)
                .where(G2APurchase.id == row_id,
                       G2APurchase.status == G2APurchaseStatus.CREATED)
                .values(status=G2APurchaseStatus.PAID, updated_at=func.now(),
                        last_error="paid at G2A after the order was refunded")
            )
        result.paid_after_refund.append(str(g2a_order_id))
        if order_id not in result.resumed:
            result.resumed.append(order_id)
        log.warning(
            "g2a order paid for a refunded order; fetching its key",
            order_id=str(order_id), g2a_order_id=g2a_order_id,
        )
