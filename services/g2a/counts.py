"""A G2A client's request figures, for the one summary line a run logs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestCounts:
    """What one client sent so far: requests that reached G2A (or may have), attempts after
    the first of a call, and the answers that were not a success by status (`429`, `503`,
    `timeout`, `unreachable` …). A run's figures are the difference of two snapshots."""

    requests: int = 0
    retries: int = 0
    faults: dict[str, int] = field(default_factory=dict)

    def since(self, earlier: RequestCounts) -> RequestCounts:
        faults = Counter(self.faults)
        faults.subtract(earlier.faults)
        return RequestCounts(self.requests - earlier.requests, self.retries - earlier.retries,
                             {status: n for status, n in sorted(faults.items()) if n})
