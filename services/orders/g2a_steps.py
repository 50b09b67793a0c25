"""The G2A steps of fulfilment: one G2A call and the `g2a_purchases` row change it makes.

Each step runs inside a transaction of `fulfilment.Fulfiller` that holds the order row lock
(see that module for why), and ends one of three ways:
- returns: the row change is committed with the transaction;
- raises `StepFailed`: G2A refused for good, answered an order we will not pay (above
  `max_price` or not in EUR), or the key is lost. The row change (FAILED / KEY_LOST) is
  committed together with the order's settlement (fulfilment: FAILED with a full refund
  when no key was delivered, else COMPLETED with a refund of the undelivered units);
- raises `StepPending`: the outcome is unknown or G2A is not ready (timeout, 5xx, key not
  ready). The transaction rolls back and a later run resumes from the stored state.

`keep_key` is the one step for a unit of an already refunded order: it never fails the order
(it is final), so a lost key there is reported to the caller instead of raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import NoReturn, Protocol

import dramatiq
import structlog
from cryptography.fernet import Fernet
from prometheus_client import Counter
from sqlalchemy import func
from sqlalchemy.orm import Session

from db.models import G2APurchase, G2APurchaseStatus, Order
from services.g2a import (
    CreatedOrder,
    G2AAuthError,
    G2ABadRequest,
    G2AClient,
    G2AError,
    G2AInsufficientFunds,
    G2AKeyAlreadyDownloaded,
    G2AOrderNotFound,
    G2APaymentNotReady,
)

log = structlog.get_logger(__name__)

Logger = structlog.typing.FilteringBoundLogger

G2A_KEYS_LOST = Counter(
    "keysync_g2a_keys_lost_total", "Paid G2A keys answered ORD04 before we stored them (alert)"
)
G2A_BAD_ORDER_ANSWERS = Counter(
    "keysync_g2a_bad_order_answers_total",
    "G2A order creations answered above max_price or in another currency (never paid; alert)",
)
G2A_KEYS_KEPT = Counter(
    "keysync_g2a_keys_kept_total",
    "Keys fetched for units paid before their order was FAILED/CANCELLED (kept for support)",
)

# G2A refusals that no retry can fix: out of stock (ORD01), price above our max (ORD05),
# unknown product (BR01), not enough funds on the account (ORD112).
_UNRECOVERABLE = (G2ABadRequest, G2AInsufficientFunds, G2AOrderNotFound)


class StepFailed(Exception):
    """The unit cannot be delivered: commit its row state and FAIL the order (refund)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StepPending(Exception):
    """Nothing is known or ready yet: roll back, a later run resumes from the stored row."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class G2AOrderStored(Protocol):
    """Told, inside the transaction that stores a new G2A order, that the order is known
    now: a G2A webhook about it may have beaten that commit and be waiting as an orphan.

    The job wires `services.webhooks.service.enqueue_orphans`. A parameter, not an import:
    webhooks apply statuses through this package, so it must not import webhooks back."""

    def __call__(
        self, session: Session, broker: dramatiq.Broker, *, g2a_order_id: str
    ) -> object: ...


@dataclass(frozen=True, slots=True)
class Unit:
    item_id: int
    unit_index: int
    product_id: str
    max_price: Decimal  # what the customer paid for this unit: never buy above it


@dataclass(frozen=True)
class G2ASteps:
    g2a: G2AClient
    broker: dramatiq.Broker
    fernet: Fernet
    currency: str
    g2a_order_stored: G2AOrderStored

    def create(self, session: Session, unit: Unit) -> None:
        """No row yet: `POST /v1/order`, then the CREATED row (we only ever pay orders we
        stored)."""
        bound = log.bind(order_item_id=unit.item_id, unit_index=unit.unit_index)
        try:
            created = self.g2a.create_order(
                unit.product_id, max_price=unit.max_price, currency=self.currency
            )
        except _UNRECOVERABLE as exc:
            bound.warning("g2a refused the order", error_code=exc.code)
            session.add(
                G2APurchase(
                    order_item_id=unit.item_id,
                    unit_index=unit.unit_index,
                    status=G2APurchaseStatus.FAILED,
                    last_error=str(exc),
                )
            )
            raise StepFailed(f"g2a create_order: {exc.code}") from None
        except G2AError as exc:
            # Unknown outcome (timeout) included: at worst G2A holds an unpaid orphan order,
            # which costs nothing; we only ever pay orders we stored.
            _pending(exc, bound, "create_order")
        bad = self._bad_answer(created, unit)
        if bad:
            # G2A should have refused (ORD05) or charged in EUR. Paying would spend more
            # than the customer paid, or an amount we cannot compare: a refused unit. The
            # G2A order stays unpaid (costs nothing); the row keeps its id for support.
            bound.error(
                "ALERT g2a answered an order we will not pay", alert="g2a_bad_order_answer",
                g2a_order_id=created.order_id, price=str(created.price),
                currency=created.currency, max_price=str(unit.max_price),
            )
            G2A_BAD_ORDER_ANSWERS.inc()
        session.add(
            G2APurchase(
                order_item_id=unit.item_id,
                unit_index=unit.unit_index,
                g2a_order_id=created.order_id,
                status=G2APurchaseStatus.FAILED if bad else G2APurchaseStatus.CREATED,
                price=created.price,
                last_error=f"not paid: {bad}" if bad else None,
            )
        )
        if bad:
            raise StepFailed(f"g2a create_order answer: {bad}")
        session.flush()
        self.g2a_order_stored(session, self.broker, g2a_order_id=created.order_id)
        bound.info("g2a order created", g2a_order_id=created.order_id, price=str(created.price))

    def _bad_answer(self, created: CreatedOrder, unit: Unit) -> str:
        """Why G2A's answer to an order creation must not be paid, or ""."""
        if created.currency.strip().upper() != self.currency.upper():
            return f"currency {created.currency}, expected {self.currency}"
        if created.price > unit.max_price:
            return f"price {created.price} above max_price {unit.max_price}"
        return ""

    def pay(self, row: G2APurchase) -> None:
        """CREATED: `PUT /v1/order/pay/{id}` (idempotent at G2A), then PAID."""
        assert row.g2a_order_id is not None
        bound = _bind(row)
        try:
            payment = self.g2a.pay_order(row.g2a_order_id)
        except _UNRECOVERABLE as exc:
            bound.warning("g2a refused the payment", error_code=exc.code)
            _mark(row, G2APurchaseStatus.FAILED, str(exc))
            raise StepFailed(f"g2a pay_order: {exc.code}") from None
        except G2AError as exc:
            _pending(exc, bound, "pay_order")
        row.status = G2APurchaseStatus.PAID
        row.transaction_id = payment.transaction_id
        row.updated_at = func.now()
        bound.info("g2a order paid", g2a_order_id=row.g2a_order_id)

    def fetch_key(self, row: G2APurchase) -> None:
        """PAID: `GET /v1/order/key/{id}` (handed out once), then DELIVERED, encrypted.

        Paid, and G2A says the key went out already, but we never stored it (a crash or a
        lost response): retrying cannot bring it back, so alert and refund the customer
        instead of leaving the order hanging."""
        bound = _bind(row)
        key = self._download(
            row, bound, call="get_key", alert="g2a_key_lost",
            message="ALERT paid g2a key lost (already downloaded); recover it via G2A support",
            lost_prefix="",
        )
        if key is None:
            raise StepFailed("g2a key already downloaded")
        self._store(row, key)
        bound.info("g2a key stored", g2a_order_id=row.g2a_order_id)

    def keep_key(self, row: G2APurchase, order: Order) -> bool:
        """PAID unit of a FAILED/CANCELLED order: fetch the key and keep it (DELIVERED
        under a refunded order = kept for support; the order view shows keys only for
        COMPLETED orders, so the customer never sees it). False if G2A will not hand it
        out any more (KEY_LOST, alerted)."""
        refunded_as = order.status.value
        bound = _bind(row).bind(order_id=str(order.id), order_status=refunded_as)
        key = self._download(
            row, bound, call="get_key (refunded order)", alert="g2a_paid_after_refund",
            message="ALERT g2a key paid for a refunded order cannot be fetched (already "
            "downloaded); recover it via G2A support",
            lost_prefix=f"paid, order {refunded_as}: ",
        )
        if key is None:
            return False
        self._store(row, key)
        G2A_KEYS_KEPT.inc()
        bound.warning("g2a key of a refunded order kept for support")
        return True

    def _download(
        self, row: G2APurchase, bound: Logger, *, call: str, alert: str, message: str,
        lost_prefix: str,
    ) -> str | None:
        """The key, or None when G2A answers ORD04 (then the row is KEY_LOST, alerted)."""
        assert row.g2a_order_id is not None  # PAID rows always carry the G2A order id
        try:
            return self.g2a.get_key(row.g2a_order_id)
        except G2AKeyAlreadyDownloaded as exc:
            bound.error(message, alert=alert)
            G2A_KEYS_LOST.inc()
            _mark(row, G2APurchaseStatus.KEY_LOST, f"{lost_prefix}{exc}")
            return None
        except G2AError as exc:
            _pending(exc, bound, call)

    def _store(self, row: G2APurchase, key: str) -> None:
        row.key_encrypted = self.fernet.encrypt(key.encode())
        _mark(row, G2APurchaseStatus.DELIVERED)


def _bind(row: G2APurchase) -> Logger:
    bound: Logger = log.bind(
        order_item_id=row.order_item_id, unit_index=row.unit_index,
        g2a_order_id=row.g2a_order_id,
    )
    return bound


def _mark(row: G2APurchase, status: G2APurchaseStatus, error: str | None = None) -> None:
    row.status = status
    row.last_error = error
    row.updated_at = func.now()


def _pending(exc: G2AError, bound: Logger, call: str) -> NoReturn:
    level = bound.error if isinstance(exc, G2AAuthError) else bound.info
    if isinstance(exc, G2APaymentNotReady):
        level("g2a key not ready yet", call=call)
    else:
        level("g2a call failed; will retry", call=call, error_code=exc.code)
    raise StepPending(f"{call}: {exc.code}")
