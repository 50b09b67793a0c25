"""When a catalog sync that did not succeed is tried again (`jobs.catalog` applies it).

The next scheduled full sync is 12 hours away, and it is the only run that notices products
G2A delisted; so a failed one is retried soon, with growing delays, within a bounded window
(SYNC_RETRY_WINDOW_S after its first attempt started), then left to an operator as a
failed run and a dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    # SYNC_RETRY_MIN_MS, SYNC_RETRY_MAX_MS, SYNC_RETRY_WINDOW_S (keysync.settings).
    min_delay_ms: int = 60_000
    max_delay_ms: int = 900_000
    window_ms: int = 3_600_000

    def __post_init__(self) -> None:
        if not 0 < self.min_delay_ms <= self.max_delay_ms:
            raise ValueError("retry delays need 0 < min_delay_ms <= max_delay_ms, got "
                             f"{self.min_delay_ms} and {self.max_delay_ms}")
        if self.window_ms <= 0:
            raise ValueError(f"window_ms must be positive, got {self.window_ms}")

    def backoff_ms(self, failures: int) -> int:
        """Delay after the `failures`-th failed attempt (1-based): min, 2·min, 4·min, … max."""
        if failures < 1:
            raise ValueError(f"failures counts from 1, got {failures}")
        # The exponent is capped so a long run of failures cannot build a huge integer.
        return min(self.min_delay_ms << min(failures - 1, 32), self.max_delay_ms)

    def allows(self, elapsed_ms: int, delay_ms: int) -> bool:
        """Whether an attempt `delay_ms` from now still starts inside the window, counted
        from the first attempt (`elapsed_ms` ago)."""
        return elapsed_ms + delay_ms <= self.window_ms

    def schedule(self) -> list[int]:
        """Every failure retry's delay while the attempts themselves took no time: what
        the defaults promise (1, 2, 4, 8, 15, 15, 15 minutes: the last one starts at 60)."""
        delays: list[int] = []
        while self.allows(sum(delays), self.backoff_ms(len(delays) + 1)):
            delays.append(self.backoff_ms(len(delays) + 1))
        return delays
