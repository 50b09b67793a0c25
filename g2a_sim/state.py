"""The simulator's mutable state: the catalog as it changes, orders, keys, stats, and the
armed faults and drift. Plain Python guarded by one lock; the HTTP modules only translate."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from g2a_sim.catalog import (
    FIRST_ID,
    MIN_CENTS,
    PAGE_SIZE,
    ListingFilter,
    Product,
    fmt_datetime,
    make_product,
    to_cents,
)
from g2a_sim.faults import Drift, Fault, TokenBucket


class SimError(Exception):
    """A G2A-style error answer: `{status: "ERROR", code, message}` with `http_status`."""

    def __init__(self, http_status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.http_status = http_status
        self.code = code
        self.message = message


@dataclass(slots=True)
class Order:
    order_id: str
    product_id: int
    price: int
    currency: str
    paid_at: float | None = None  # monotonic
    transaction_id: str | None = None
    key: str | None = None
    key_downloaded: bool = False
    webhook_sent: bool = False


@dataclass(slots=True)
class Stats:
    requests: int = 0
    requests_by_path: dict[str, int] = field(default_factory=dict)
    rate_limited: int = 0
    faults_injected: int = 0
    listing_requests: int = 0
    lookups: int = 0
    orders_created: int = 0
    orders_paid: int = 0
    payments: int = 0
    keys_issued: int = 0
    key_requests_rejected: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "requests_by_path": dict(self.requests_by_path),
            "rate_limited": self.rate_limited,
            "faults_injected": self.faults_injected,
            "listing_requests": self.listing_requests,
            "lookups": self.lookups,
            "orders_created": self.orders_created,
            "orders_paid": self.orders_paid,
            "payments": self.payments,
            "keys_issued": self.keys_issued,
            "key_requests_rejected": self.key_requests_rejected,
        }


class SimState:
    def __init__(
        self,
        *,
        products: int,
        seed: int,
        rate_limit_per_min: int,
        key_delay_s: float,
        funds: Decimal,
        on_complete: Callable[[str], None] | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.seed = seed
        rng = random.Random(seed)
        self.products: dict[int, Product] = {}
        self.ids: list[int] = []  # ascending; new ids are always larger
        for i in range(products):
            pid = FIRST_ID + i * 7
            self.products[pid] = make_product(rng, pid)
            self.ids.append(pid)
        self._next_id = FIRST_ID + products * 7
        self._mutations = 0
        self.version = 0
        self._listing_cache: dict[ListingFilter, list[int]] = {}
        self._cache_version = 0
        self.orders: dict[str, Order] = {}
        # Order ids must not repeat across simulator restarts (keysync stores them as
        # unique), so they start from the wall clock rather than the seed.
        self._order_seq = int(time.time() * 1000) % 10**12 * 100
        self.rate_limit = TokenBucket(rate_limit_per_min)
        self.key_delay_s = key_delay_s
        self.funds = to_cents(funds)
        self.faults: list[Fault] = []  # in the order they were added (g2a_sim.faults)
        self.drift: Drift | None = None
        self.stats = Stats()
        self.on_complete = on_complete

    # -- listing ----------------------------------------------------------------------

    def listing(self, page: int, flt: ListingFilter) -> tuple[int, list[dict[str, Any]]]:
        """One page of a listing; with `product_id`, as G2A does, a normal listing page
        filtered to that id (`total` 0 and no docs when it is not listed)."""
        with self.lock:
            if flt.product_id is not None:
                self.stats.lookups += 1
                p = self.products.get(int(flt.product_id)) if flt.product_id.isdigit() else None
                matched = [p.id] if p is not None and flt.matches(p) else []
            else:
                self.stats.listing_requests += 1
                matched = self._matching(flt)
            start = (page - 1) * PAGE_SIZE
            docs = [self.products[pid].doc() for pid in matched[start : start + PAGE_SIZE]]
            total = len(matched)
            drift = self.drift
            if flt.product_id is None and drift is not None and drift.applied is None:
                drift.listed += 1
                if drift.listed >= drift.after:
                    # After this answer was computed: the pages answered so far were read
                    # before the catalog moved.
                    self._apply_drift(drift)
            return total, docs

    def _apply_drift(self, drift: Drift) -> None:
        if drift.remove_id is not None and drift.remove_id in self.products:
            gone = drift.remove_id
        else:
            # In stock, so the product leaves every listing, with or without includeOutOfStock.
            gone = next(pid for pid in self.ids if self.products[pid].qty > 0)
        del self.products[gone]
        self.ids.remove(gone)
        rng = random.Random(f"{self.seed}:drift:{gone}")
        pid = self._next_id
        self._next_id += 7
        product = make_product(rng, pid, updated_at=int(time.time()))
        product.qty = max(product.qty, 1)
        self.products[pid] = product
        self.ids.append(pid)
        self.version += 1
        drift.applied = {"after": drift.after, "removed": str(gone), "added": str(pid)}

    def set_drift(self, after: int, remove_id: int | None) -> None:
        with self.lock:
            if remove_id is not None and remove_id not in self.products:
                raise SimError(400, "BR01", f"product {remove_id} does not exist")
            self.drift = Drift(after=after, remove_id=remove_id)

    def _matching(self, flt: ListingFilter) -> list[int]:
        # A sync walks up to 500 pages with one filter; caching the match list per catalog
        # version makes every page after the first O(page size).
        if self._cache_version != self.version:
            self._listing_cache.clear()
            self._cache_version = self.version
        hit = self._listing_cache.get(flt)
        if hit is None:
            products = self.products
            hit = [pid for pid in self.ids if flt.matches(products[pid])]
            if len(self._listing_cache) > 64:
                self._listing_cache.clear()
            self._listing_cache[flt] = hit
        return hit

    # -- mutations --------------------------------------------------------------------

    def mutate(self, changed: int, added: int, removed: int, out_of_stock: int) -> dict[str, Any]:
        with self.lock:
            self._mutations += 1
            rng = random.Random(f"{self.seed}:mutation:{self._mutations}")
            now = int(time.time())
            in_stock = [pid for pid in self.ids if self.products[pid].qty > 0]
            oos = rng.sample(in_stock, min(out_of_stock, len(in_stock)))
            rest = sorted(set(self.ids) - set(oos))
            picked = rng.sample(rest, min(changed + removed, len(rest)))
            chg, rem = picked[:changed], picked[changed:]
            for pid in chg:
                p = self.products[pid]
                factor = rng.choice((0.8, 0.9, 0.95, 1.05, 1.1, 1.25))
                p.min_price = max(MIN_CENTS, round(p.min_price * factor))
                if p.retail_min_price is not None:
                    p.retail_min_price = p.min_price + rng.randint(0, max(1, p.min_price // 10))
                    p.retail_base = p.retail_min_price + rng.randint(0, 200)
                p.qty = rng.randint(1, 500)
                p.updated_at = now
            for pid in oos:
                self.products[pid].qty = 0
                self.products[pid].updated_at = now
            for pid in rem:
                del self.products[pid]
            if rem:
                gone = set(rem)
                self.ids = [pid for pid in self.ids if pid not in gone]
            new_ids = []
            for _ in range(added):
                pid = self._next_id
                self._next_id += 7
                product = make_product(rng, pid, updated_at=now)
                if product.qty == 0:
                    product.qty = rng.randint(1, 500)
                self.products[pid] = product
                self.ids.append(pid)
                new_ids.append(pid)
            self.version += 1
            return {
                "changed": [str(i) for i in sorted(chg)],
                "added": [str(i) for i in new_ids],
                "removed": [str(i) for i in sorted(rem)],
                "out_of_stock": [str(i) for i in sorted(oos)],
                "updated_at": fmt_datetime(now),
            }

    # -- orders -----------------------------------------------------------------------

    def create_order(self, product_id: str, currency: str, max_price: Decimal) -> Order:
        with self.lock:
            p = self.products.get(int(product_id)) if product_id.isdigit() else None
            if p is None:
                raise SimError(400, "BR01", f"product {product_id} does not exist")
            if p.qty <= 0:
                raise SimError(400, "ORD01", f"product {product_id} is out of stock")
            price = p.retail_min_price if p.retail_min_price is not None else p.min_price
            if price > to_cents(max_price):
                raise SimError(400, "ORD05", f"price {price / 100:.2f} exceeds max_price")
            if price > self.funds:
                raise SimError(403, "ORD112", "not enough funds on the account")
            self._order_seq += 1
            order = Order(str(self._order_seq), p.id, price, currency or "EUR")
            self.orders[order.order_id] = order
            self.stats.orders_created += 1
            return order

    def _order(self, order_id: str) -> Order:
        order = self.orders.get(order_id)
        if order is None:
            raise SimError(404, "ORD02", f"order {order_id} not found")
        return order

    def pay(self, order_id: str) -> Order:
        with self.lock:
            order = self._order(order_id)
            if order.transaction_id is not None:
                return order  # idempotent: same transaction, no second charge
            p = self.products.get(order.product_id)
            if p is None or p.qty <= 0:
                raise SimError(400, "ORD01", "product is out of stock")
            if order.price > self.funds:
                raise SimError(403, "ORD112", "not enough funds on the account")
            self.funds -= order.price
            p.qty -= 1
            p.updated_at = int(time.time())
            self.version += 1
            order.paid_at = time.monotonic()
            digest = hashlib.sha256(f"{self.seed}:{order_id}".encode()).hexdigest()
            order.transaction_id = f"tx-{digest[:20]}"
            order.key = _key(digest)
            self.stats.orders_paid += 1
            self.stats.payments += 1
            self._maybe_complete(order)
            return order

    def _ready(self, order: Order) -> bool:
        return order.paid_at is not None and time.monotonic() >= order.paid_at + self.key_delay_s

    def _maybe_complete(self, order: Order) -> None:
        if not order.webhook_sent and self._ready(order):
            order.webhook_sent = True
            if self.on_complete is not None:
                self.on_complete(order.order_id)

    def status(self, order: Order) -> str:
        if order.paid_at is None:
            return "new"
        return "complete" if self._ready(order) else "pending"

    def details(self, order_id: str) -> tuple[Order, str]:
        with self.lock:
            order = self._order(order_id)
            self._maybe_complete(order)
            return order, self.status(order)

    def due_for_completion(self) -> list[str]:
        """Paid orders whose key just became ready (for the webhook ticker)."""
        with self.lock:
            due = []
            for order in self.orders.values():
                if order.paid_at is not None and not order.webhook_sent and self._ready(order):
                    order.webhook_sent = True
                    due.append(order.order_id)
            return due

    def take_key(self, order_id: str) -> str:
        with self.lock:
            order = self.orders.get(order_id)
            if order is None:
                self.stats.key_requests_rejected += 1
                raise SimError(404, "ORD02", f"order {order_id} not found")
            if not self._ready(order) or order.key is None:
                self.stats.key_requests_rejected += 1
                raise SimError(400, "ORD03", "payment not ready")
            if order.key_downloaded:
                self.stats.key_requests_rejected += 1
                raise SimError(400, "ORD04", "key already downloaded")
            self._maybe_complete(order)
            order.key_downloaded = True
            self.stats.keys_issued += 1
            return order.key


def _key(digest: str) -> str:
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    value = int(digest, 16)
    chars = []
    for _ in range(15):
        value, rem = divmod(value, len(alphabet))
        chars.append(alphabet[rem])
    return "-".join("".join(chars[i : i + 5]) for i in range(0, 15, 5))
