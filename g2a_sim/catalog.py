"""The simulator's deterministic catalog data: products, their documents, listing filters.

A product is a pure function of (seed, id); `state.SimState` holds the catalog and changes
it (mutations, drift, payments), deterministically in the seed and the change sequence.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
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
MIN_CENTS, _MAX_CENTS = 50, 15_000

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
    return None if cents is None else money(cents)


def fmt_datetime(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime(DATETIME_FORMAT)


def parse_datetime(value: str) -> int:
    return int(datetime.strptime(value, DATETIME_FORMAT).replace(tzinfo=UTC).timestamp())


def money(cents: int) -> float:
    """An amount as the API writes it: a JSON number in units, not cents."""
    # int / 100 is the correctly rounded float, whose repr has at most two decimals.
    return cents / 100


def to_cents(value: Decimal) -> int:
    return int((value * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def make_product(rng: random.Random, pid: int, updated_at: int | None = None) -> Product:
    name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {rng.randint(1, 9)}"
    platform = rng.choice(_PLATFORMS)
    region = rng.choice(_REGIONS)
    # Log-uniform over 0.50..150.00 so every price band holds products and partitioning
    # a large catalog by price range gives balanced slices.
    cents = round(math.exp(rng.uniform(math.log(MIN_CENTS), math.log(_MAX_CENTS))))
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
