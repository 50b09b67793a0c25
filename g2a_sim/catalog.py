"""The simulator's deterministic catalog and its mutable state (orders, stats, faults).

Everything here is plain Python guarded by one lock; `app.py` only translates HTTP. Data
is a pure function of (seed, product count) until `/_sim/mutate` or orders change it, and
mutations themselves are deterministic in the seed and the mutation sequence.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
PAGE_SIZE = 20
MAX_PAGE = 500
FIRST_ID = 10_000_000_100_000
# Initial `updated_at` values lie in this past window, so anything touched "now" by a
# mutation or a payment is strictly newer than every untouched product.
_EPOCH_FROM = int(datetime(2023, 1, 1, tzinfo=UTC).timestamp())
_EPOCH_TO = int(datetime(2024, 12, 31, tzinfo=UTC).timestamp())
_MIN_CENTS, _MAX_CENTS = 50, 15_000

_ADJECTIVES = (
    "Crimson", "Silent", "Eternal", "Broken", "Hidden", "Iron", "Lost", "Neon", "Savage",
    "Frozen", "Golden", "Shadow", "Wild", "Final", "Ancient", "Cosmic", "Rogue", "Twisted",
)
_NOUNS = (
    "Empire", "Legends", "Frontier", "Odyssey", "Protocol", "Kingdom", "Horizon", "Outlaws",
    "Dungeon", "Tactics", "Racing", "Survivor", "Chronicles", "Warfare", "Colony", "Arena",
)
_PLATFORMS = (
    "Steam", "Origin", "Ubisoft Connect", "GOG.com", "Epic Games", "Xbox Live", "PSN",
    "Nintendo", "Battle.net", "Rockstar",
)
_REGIONS = ("GLOBAL", "EUROPE", "NORTH AMERICA", "UNITED KINGDOM", "LATAM", "ASIA")
_STUDIOS = ("Nordic Forge", "Pixel Harbor", "Redline Games", "Moonwell", "Blue Anvil", "Kestrel")
_CATEGORIES = ((189, "Action"), (190, "Adventure"), (191, "RPG"), (192, "Strategy"),
               (193, "Simulation"), (194, "Racing"), (195, "Indie"), (196, "Sports"))


@dataclass(slots=True)
class Product:
    id: int
    name: str
    slug: str
    qty: int
    min_price: int  # cents
    retail_min_price: int | None  # cents; None for ~10 %, clients fall back to minPrice
    retail_base: int | None
    updated_at: int  # unix seconds, UTC
    release_date: str
    region: str
    platform: str
    studio: str
    category: tuple[int, str]
    cover: bool

    def doc(self) -> dict[str, Any]:
        img = f"https://images.g2a.sim/{self.id}"
        return {
            "id": str(self.id),
            "name": self.name,
            "type": "egoods",
            "slug": self.slug,
            "qty": self.qty,
            "minPrice": _num(self.min_price),
            "retail_min_price": _num(self.retail_min_price),
            "retailMinBasePrice": _num(self.retail_base),
            "availableToBuy": self.qty > 0,
            "thumbnail": f"{img}/thumb.jpg",
            "smallImage": f"{img}/small.jpg",
            "coverImage": f"{img}/cover.jpg" if self.cover else None,
            "updated_at": fmt_datetime(self.updated_at),
            "release_date": self.release_date,
            "region": self.region,
            "developer": self.studio,
            "publisher": self.studio + " Publishing",
            "platform": self.platform,
            "categories": [{"id": self.category[0], "name": self.category[1]}],
        }


def _num(cents: int | None) -> float | None:
    # int / 100 is the correctly rounded float, whose repr has at most two decimals.
    return None if cents is None else cents / 100


def fmt_datetime(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime(DATETIME_FORMAT)


def parse_datetime(value: str) -> int:
    return int(datetime.strptime(value, DATETIME_FORMAT).replace(tzinfo=UTC).timestamp())


def to_cents(value: Decimal) -> int:
    return int((value * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _make_product(rng: random.Random, pid: int, updated_at: int | None = None) -> Product:
    name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.randint(1, 9)}"
    platform = rng.choice(_PLATFORMS)
    region = rng.choice(_REGIONS)
    # Log-uniform over 0.50..150.00 so every price band holds products and partitioning
    # a large catalog by price range gives balanced slices.
    cents = round(math.exp(rng.uniform(math.log(_MIN_CENTS), math.log(_MAX_CENTS))))
    retail = None if rng.random() < 0.1 else cents + rng.randint(0, max(1, cents // 10))
    qty = 0 if rng.random() < 0.1 else rng.randint(1, 500)
    slug_base = "-".join(f"{name} {platform} key {region}".lower().replace(".", "").split())
    return Product(
        id=pid,
        name=f"{name} ({platform}) Key {region}",
        slug=f"{slug_base}-{pid}",
        qty=qty,
        min_price=cents,
        retail_min_price=retail,
        retail_base=None if retail is None else retail + rng.randint(0, 200),
        updated_at=updated_at if updated_at is not None else rng.randint(_EPOCH_FROM, _EPOCH_TO),
        release_date=f"{rng.randint(2005, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        region=region,
        platform=platform,
        studio=rng.choice(_STUDIOS),
        category=rng.choice(_CATEGORIES),
        cover=rng.random() >= 0.05,
    )


@dataclass(frozen=True, slots=True)
class ListingFilter:
    include_out_of_stock: bool = False
    min_qty: int | None = None
    updated_from: int | None = None
    updated_to: int | None = None
    price_from: int | None = None
    price_to: int | None = None
    product_id: str | None = None

    def matches(self, p: Product) -> bool:
        return (
            (self.include_out_of_stock or p.qty > 0)
            and (self.min_qty is None or p.qty >= self.min_qty)
            and (self.updated_from is None or p.updated_at >= self.updated_from)
            and (self.updated_to is None or p.updated_at <= self.updated_to)
            and (self.price_from is None or p.min_price >= self.price_from)
            and (self.price_to is None or p.min_price <= self.price_to)
        )


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


FAULT_TARGETS = ("listing", "lookup")


@dataclass(slots=True)
class Fault:
    rate: float = 1.0
    status: int | None = None  # None: latency only; 0: malformed JSON with 200
    latency_ms: int = 0
    count: int | None = None  # fire this many times, then clear; None: until cleared
    skip: int = 0  # let this many eligible requests through untouched first
    paths: str | None = None
    # "listing": `/v1/products` without `id`; "lookup": `/v1/products?id=`; None: any.
    only: str | None = None
    # Answer listing requests `200 {total: 0, docs: []}` (a G2A index glitch), not an error.
    empty_listing: bool = False
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def applies_to(self, path: str, target: str | None) -> bool:
        if self.paths is not None and not path.startswith(self.paths):
            return False
        return self.only is None or self.only == target


@dataclass(slots=True)
class Drift:
    """Catalog drift in the middle of a listing (CONTRACT §6's scenario): once `after`
    listing requests have been answered, remove one product (by default the first in id
    order, so it is on page 1 of every listing, a page already read) and add a new one at
    the end. `total` stays the same, every page stays full, and the product at each
    boundary between a read and an unread page slides onto the read page unseen."""

    after: int
    remove_id: int | None = None
    listed: int = 0  # listing requests answered since it was armed
    applied: dict[str, Any] | None = None


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


class TokenBucket:
    """`per_min` sustained with bursts of three seconds' worth (at least two requests).

    A bucket, not a window, so "R per minute" also means "no more than R/60 a second on
    average": a client pacing itself with the same rate (and a smaller burst, as keysync's
    limiter does) never sees a 429, with a second of slack for network jitter.
    """

    def __init__(self, per_min: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_min = per_min
        self.rate = per_min / 60.0
        self.burst = max(2.0, self.rate * 3)
        self._clock = clock
        self._tokens = self.burst
        self._ts = clock()

    def take(self) -> float:
        """0.0 when a request may pass, else the seconds until one may."""
        if self.per_min <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._ts) * self.rate)
        self._ts = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


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
            self.products[pid] = _make_product(rng, pid)
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
        self.fault: Fault | None = None
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
        product = _make_product(rng, pid, updated_at=int(time.time()))
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
                p.min_price = max(_MIN_CENTS, round(p.min_price * factor))
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
                product = _make_product(rng, pid, updated_at=now)
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
