"""What the simulated gateway does besides answering: its rate limit, injected faults, and
catalog drift in the middle of a listing (set through `/_sim/faults` and `/_sim/drift`).

Faults stack: each `POST /_sim/faults` adds one with its own id, and they stay until their
`count` is used up or they are removed (`DELETE /_sim/faults[/{id}]`). A request meets them in
the order they were added; the first that fires answers it, the others never see it."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FAULT_TARGETS = ("listing", "lookup")


@dataclass(slots=True)
class Fault:
    id: int = 0
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

    def as_dict(self) -> dict[str, Any]:
        """What `GET /_sim/faults` shows: `count` and `skip` as they are now (remaining)."""
        return {"id": self.id, "rate": self.rate, "status": self.status,
                "latency_ms": self.latency_ms, "count": self.count, "skip": self.skip,
                "paths": self.paths, "only": self.only, "empty_listing": self.empty_listing}


def fire(faults: list[Fault], path: str, target: str | None) -> Fault | None:
    """The fault that answers this request, if any (call under the state's lock). Each
    applicable fault in turn spends its `skip`, then rolls its `rate`; the first that fires
    spends one of its `count` and is dropped from `faults` once that is used up."""
    for fault in faults:
        if not fault.applies_to(path, target):
            continue
        if fault.skip > 0:
            fault.skip -= 1
            continue
        if fault.rng.random() >= fault.rate:
            continue
        if fault.count is not None:
            fault.count -= 1
            if fault.count <= 0:
                faults.remove(fault)
        return fault
    return None


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
