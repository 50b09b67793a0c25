"""Fulfilment: buy one G2A key per ordered unit, exactly once, across retries and crashes.

Never pay G2A for keys nobody gets (CONTRACT §5):
- pre-flight: before the first purchase of an order, one `GET /v1/products?id=` per item
  (paced by the shared limiter like every call). If any item is no longer listed, has
  fewer units than ordered, or costs more than its `max_price` (what the customer paid per
  unit), nothing is bought and the order FAILS with a full refund;
- the residual race: a unit G2A refuses after the pre-flight (or whose key is lost) ends
  the buying. Units before it are DELIVERED (units are bought one after the other), so the
  order is settled at once, in the transaction that records the refused unit: no key at
  all → FAILED, full refund; otherwise COMPLETED with the keys it has and one REFUND of
  the undelivered units (`status.apply(..., settle_undelivered=True)`).

Each unit of each order item has at most one `g2a_purchases` row (unique on
`(order_item_id, unit_index)`) and walks CREATED -> PAID -> DELIVERED, one committed step
per G2A call (the calls and their row changes are `g2a_steps`; this module orders them):

1. no row: `POST /v1/order`, then INSERT the row (CREATED, g2a_order_id) and commit;
2. CREATED: `PUT /v1/order/pay/{id}` (idempotent at G2A), mark PAID, commit;
3. PAID: `GET /v1/order/key/{id}`, encrypt (Fernet, KEY_ENCRYPTION_KEY), DELIVERED, commit.

A retry re-reads the row and continues from its state, so a unit never gets a second G2A
order once its row exists and is never paid twice (pay is only ever called for the stored
`g2a_order_id`). Every step runs in a transaction that holds the order's row lock across the
G2A call. That lock is the per-order mutex shared with `order_status.apply`: two deliveries
of the same message cannot both create an order for one unit, and a FAILED/CANCELLED (with
its refund) cannot slip in between our status check and a payment, so we never pay for an
order that has been refunded.

Crash windows (see docs/orders.md):
- between `POST /v1/order` and our commit: the G2A order exists but we have no row. We
  accept an orphan *unpaid* G2A order (it costs nothing) and create a fresh one on retry; we
  never pay an order we have no row for.
- between pay and our commit: the row is still CREATED; the retry pays again, which G2A
  answers with the same transaction (idempotent), then marks PAID.
- between receiving the key and our commit: G2A hands a key out once, so the retry gets
  ORD04. The unit becomes KEY_LOST, an operator alert is logged (the key must be recovered
  through G2A support) and the order FAILS with a refund: the customer is never left paying
  for a key they cannot see. No retry loop.

Paid keys are never abandoned. A FAILED/CANCELLED (and its refund) can land between a
unit's PAID commit and its key step, or while the key is not ready yet. The order is then
final and nothing more is created or paid for it, but every run that finds the order
refunded still fetches the key of each PAID unit and keeps it encrypted (DELIVERED under a
refunded order: for support or resale, never shown to the customer). A key G2A will not
hand out any more (ORD04) becomes KEY_LOST with `alert=g2a_paid_after_refund`; a transient
error leaves the unit PAID and the run PENDING, so the actor and the poller come back.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal

import dramatiq
import structlog
from cryptography.fernet import Fernet
from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import G2APurchase, G2APurchaseStatus, Game, Order, OrderItem, OrderStatus
from services.cache import Cache
from services.g2a import G2AClient, G2AError
from services.orders import status as order_status
from services.orders.g2a_steps import G2AOrderStored, G2ASteps, StepFailed, StepPending, Unit

log = structlog.get_logger(__name__)

FULFILMENT_RUNS = Counter(
    "keysync_fulfilment_runs_total", "fulfil_order runs by outcome", ["outcome"]
)  # completed | failed | pending | skipped

PREFLIGHT_REFUSALS = Counter(
    "keysync_fulfilment_preflight_refusals_total",
    "Orders failed before buying anything because G2A could not sell an item as ordered",
    ["reason"],
)  # not_listed | stock | price
PARTIAL_DELIVERIES = Counter(
    "keysync_orders_partially_delivered_total",
    "Orders COMPLETED with fewer keys than ordered (G2A refused a unit mid-way); the rest "
    "refunded",
)

_NOT_FOUND = "order not found"


@dataclass(frozen=True, slots=True)
class _Item:
    item_id: int
    quantity: int
    unit_price: Decimal
    product_id: str


class FulfilmentOutcome(enum.StrEnum):
    """How one `fulfil_order` run ended (the job re-queues itself on PENDING)."""

    COMPLETED = "completed"  # order COMPLETED: every key stored, or the rest refunded
    FAILED = "failed"  # order FAILED (refunded)
    PENDING = "pending"  # waiting on G2A (key not ready, G2A unavailable): retry later
    SKIPPED = "skipped"  # nothing to do (unknown, refunded, or already complete)


@dataclass
class FulfilmentResult:
    order_id: uuid.UUID
    outcome: FulfilmentOutcome
    reason: str = ""
    transitions: list[order_status.Transition] = field(default_factory=list)
    # units paid before the order was refunded: keys fetched and kept / lost at G2A (ORD04)
    kept_keys: int = 0
    lost_keys: int = 0


class _Stop(Exception):
    """Ends the run with `outcome`; the current step's transaction is rolled back."""

    def __init__(self, outcome: FulfilmentOutcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


@dataclass
class _Tx:
    """One fulfilment step: a transaction holding the order row lock."""

    session: Session
    order: Order


@dataclass
class Fulfiller:
    sessions: sessionmaker[Session]
    g2a: G2AClient
    cache: Cache
    broker: dramatiq.Broker
    key_encryption_key: str
    # `services.webhooks.service.enqueue_orphans` in every real run (see `G2AOrderStored`).
    g2a_order_stored: G2AOrderStored
    currency: str = "EUR"
    _steps: G2ASteps = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._steps = G2ASteps(
            self.g2a, self.broker, Fernet(self.key_encryption_key.encode()), self.currency,
            self.g2a_order_stored,
        )

    def run(self, order_id: uuid.UUID) -> FulfilmentResult:
        with structlog.contextvars.bound_contextvars(order_id=str(order_id)):
            result = FulfilmentResult(order_id, FulfilmentOutcome.PENDING)
            try:
                units, started = self._start(result)
                if not started:
                    self._preflight(units, result)
                for unit in units:
                    self._deliver_unit(unit, result)
                self._finish(result)
            except _Stop as stop:
                result.outcome, result.reason = stop.outcome, stop.reason
                failed = stop.outcome in (FulfilmentOutcome.FAILED, FulfilmentOutcome.SKIPPED)
                if failed and stop.reason != _NOT_FOUND:
                    self._keep_paid_keys(result)
            FULFILMENT_RUNS.labels(result.outcome.value).inc()
            log.info("fulfilment run ended", outcome=result.outcome.value, reason=result.reason)
            return result

    # --- transactions ------------------------------------------------------------------

    @contextmanager
    def _locked(self, result: FulfilmentResult) -> Iterator[_Tx]:
        """A transaction holding the order row lock; jobs enqueued in it are sent at its
        commit, and the transitions made in it are invalidated right after.

        A step that fails the unit (`StepFailed`) commits its row state with the order's
        settlement (FAILED with a full refund, or COMPLETED with the keys it has and a
        refund of the rest), then ends the run; a pending step rolls back."""
        before = len(result.transitions)
        stop: _Stop | None = None
        with self.sessions() as session, session.begin():
            order = order_status.lock_order(session, result.order_id)
            if order is None:
                raise _Stop(FulfilmentOutcome.SKIPPED, _NOT_FOUND)
            tx = _Tx(session, order)
            try:
                yield tx
            except StepFailed as failed:
                stop = self._settle(tx, result, failed.reason)
            except StepPending as pending:
                raise _Stop(FulfilmentOutcome.PENDING, pending.reason) from None
        for transition in result.transitions[before:]:
            if transition.changed:
                self.cache.invalidate(transition.cache_keys)
        if stop is not None:
            raise stop

    def _transition(
        self, tx: _Tx, target: OrderStatus, result: FulfilmentResult,
        *, settle_undelivered: bool = False,
    ) -> order_status.Transition:
        transition = order_status.apply(
            tx.session, tx.order.id, target, source="fulfilment", order=tx.order,
            settle_undelivered=settle_undelivered,
        )
        assert transition is not None  # the order is locked, so it exists
        result.transitions.append(transition)
        return transition

    def _start(self, result: FulfilmentResult) -> tuple[list[Unit], bool]:
        """PENDING → PROCESSING; the order's units, and whether buying has started."""
        with self._locked(result) as tx:
            order = tx.order
            if order.status in order_status.REFUNDING:
                raise _Stop(FulfilmentOutcome.SKIPPED, f"order is {order.status.value}")
            if order.status is OrderStatus.PENDING:
                self._transition(tx, OrderStatus.PROCESSING, result)
            elif order.status is OrderStatus.COMPLETED:
                # Terminal: all keys stored, or the undelivered rest refunded.
                raise _Stop(FulfilmentOutcome.SKIPPED, "order already completed")
            rows = tx.session.execute(
                select(OrderItem.id, OrderItem.quantity, OrderItem.unit_price, Game.g2a_product_id)
                .join(Game, Game.id == OrderItem.game_id)
                .where(OrderItem.order_id == order.id)
                .order_by(OrderItem.id)
            ).all()
            started = _buying_started(tx)
        units = [
            Unit(item_id, index, product_id, Decimal(unit_price))
            for item_id, quantity, unit_price, product_id in rows
            for index in range(quantity)
        ]
        return units, started

    def _settle(self, tx: _Tx, result: FulfilmentResult, reason: str) -> _Stop:
        """A unit cannot be delivered: buy nothing more and settle the order now, in the
        transaction that records the unit's state."""
        transition = self._transition(
            tx, OrderStatus.COMPLETED, result, settle_undelivered=True
        )
        if transition.status is OrderStatus.COMPLETED:
            if transition.changed:
                PARTIAL_DELIVERIES.inc()
            return _Stop(FulfilmentOutcome.COMPLETED, f"partially delivered: {reason}")
        return _Stop(FulfilmentOutcome.FAILED, reason)

    # --- pre-flight ---------------------------------------------------------------------

    def _preflight(self, units: list[Unit], result: FulfilmentResult) -> None:
        """Before the first purchase: can G2A sell every item as ordered right now?

        The look-ups run outside any transaction (they may wait for rate-limit tokens);
        the verdict is applied under the order lock, and only if buying has still not
        started. A resumed run (a unit row exists) skips it: what is bought is bought, and
        the race rules settle the rest. A look-up that fails transiently ends the run
        PENDING: nothing was bought, so the retry simply checks again."""
        items: dict[int, _Item] = {}
        for unit in units:
            known = items.get(unit.item_id)
            items[unit.item_id] = _Item(
                unit.item_id, (known.quantity if known else 0) + 1, unit.max_price,
                unit.product_id,
            )
        refusal = self._first_unbuyable(list(items.values()))
        if refusal is None:
            return
        reason, detail = refusal
        with self._locked(result) as tx:
            if tx.order.status in order_status.REFUNDING:
                raise _Stop(FulfilmentOutcome.FAILED, f"order is {tx.order.status.value}")
            if tx.order.status is not OrderStatus.PROCESSING:
                raise _Stop(FulfilmentOutcome.SKIPPED, f"order is {tx.order.status.value}")
            if _buying_started(tx):
                # Another delivery of this job passed its own pre-flight and started: let
                # the stored state (and the race rules) decide.
                raise _Stop(FulfilmentOutcome.PENDING, "another run started buying")
            log.warning("pre-flight refused the order; nothing bought", reason=reason,
                        detail=detail)
            PREFLIGHT_REFUSALS.labels(reason).inc()
            self._transition(tx, OrderStatus.FAILED, result)
        raise _Stop(FulfilmentOutcome.FAILED, f"pre-flight: {detail}")

    def _first_unbuyable(self, items: list[_Item]) -> tuple[str, str] | None:
        """(reason, detail) for the first item G2A cannot sell as ordered, or None."""
        for item in items:
            try:
                product = self.g2a.get_product(item.product_id)
            except G2AError as exc:
                log.info("pre-flight look-up failed; will retry", error_code=exc.code,
                         product_id=item.product_id)
                raise _Stop(FulfilmentOutcome.PENDING, f"pre-flight look-up: {exc.code}"
                            ) from None
            pid = item.product_id
            if product is None:
                return "not_listed", f"product {pid} is no longer listed by G2A"
            if product.qty < item.quantity:
                return "stock", (f"G2A lists {product.qty} of product {pid}, "
                                 f"{item.quantity} ordered")
            price = product.g2a_price
            if price is None or price > item.unit_price:
                return "price", (f"G2A asks {price} for product {pid}, above the "
                                 f"{item.unit_price} paid per unit")
        return None

    def _finish(self, result: FulfilmentResult) -> None:
        with self._locked(result) as tx:
            if tx.order.status in order_status.REFUNDING:
                raise _Stop(FulfilmentOutcome.FAILED, f"order is {tx.order.status.value}")
            transition = self._transition(tx, OrderStatus.COMPLETED, result)
            if transition.needs_fulfilment:  # a unit is not DELIVERED yet
                raise _Stop(FulfilmentOutcome.PENDING, "keys missing")
            result.outcome = FulfilmentOutcome.COMPLETED

    # --- one unit ----------------------------------------------------------------------

    def _deliver_unit(self, unit: Unit, result: FulfilmentResult) -> None:
        # At most three committed steps (create, pay, key); each re-reads the stored state.
        for _ in range(4):
            with self._locked(result) as tx:
                if tx.order.status in order_status.REFUNDING:
                    raise _Stop(FulfilmentOutcome.FAILED, f"order is {tx.order.status.value}")
                if tx.order.status is OrderStatus.COMPLETED:
                    # Settled by another delivery of this job: nothing more is bought.
                    raise _Stop(FulfilmentOutcome.SKIPPED, "order already completed")
                row = tx.session.execute(
                    select(G2APurchase).where(
                        G2APurchase.order_item_id == unit.item_id,
                        G2APurchase.unit_index == unit.unit_index,
                    )
                ).scalar_one_or_none()
                if row is None:
                    self._steps.create(tx.session, unit)
                elif row.status is G2APurchaseStatus.CREATED:
                    self._steps.pay(row)
                elif row.status is G2APurchaseStatus.PAID:
                    self._steps.fetch_key(row)
                elif row.status is G2APurchaseStatus.DELIVERED:
                    return
                else:  # FAILED or KEY_LOST: the order was failed with it, in the same transaction
                    raise StepFailed(f"unit is {row.status.value}")
        raise RuntimeError("unit did not settle in three steps")  # unreachable by design

    # --- units paid before the order was refunded ------------------------------------------

    def _keep_paid_keys(self, result: FulfilmentResult) -> None:
        """Fetch and keep the key of every PAID unit of a FAILED/CANCELLED order.

        G2A has been paid for these units, so their keys are ours whatever happened to the
        customer's order: leaving them at G2A would be money spent on nothing. The order
        itself is not touched (terminal, refunded once already). A transient G2A error makes
        the run PENDING, so the actor's delayed retries and then the poller come back.
        """
        try:
            with self._locked(result) as tx:
                if tx.order.status not in order_status.REFUNDING:
                    return
                row_ids = list(tx.session.scalars(
                    select(G2APurchase.id)
                    .join(OrderItem, OrderItem.id == G2APurchase.order_item_id)
                    .where(OrderItem.order_id == tx.order.id,
                           G2APurchase.status == G2APurchaseStatus.PAID)
                    .order_by(G2APurchase.id)
                ))
            # One transaction per key under the order lock, like `fetch_key`: a stored key
            # is committed before the next G2A call.
            for row_id in row_ids:
                with self._locked(result) as tx:
                    row = tx.session.execute(
                        select(G2APurchase).where(G2APurchase.id == row_id,
                                                  G2APurchase.status == G2APurchaseStatus.PAID)
                    ).scalar_one_or_none()
                    if row is None:
                        continue
                    if self._steps.keep_key(row, tx.order):
                        result.kept_keys += 1
                    else:
                        result.lost_keys += 1
        except _Stop as stop:
            result.outcome, result.reason = stop.outcome, f"keeping paid keys: {stop.reason}"


def _buying_started(tx: _Tx) -> bool:
    """Whether any unit of the order has a purchase row (bought, being bought or refused)."""
    return tx.session.execute(
        select(G2APurchase.id)
        .join(OrderItem, OrderItem.id == G2APurchase.order_item_id)
        .where(OrderItem.order_id == tx.order.id)
        .limit(1)
    ).first() is not None
