"""Views of the broker's queues, and the repair of its dead letters, from dramatiq's Redis
key layout: the one place that knows it.

`_layout` holds that layout (which key holds what) and the decoded `BrokerMessage`;
`reader` the read-only views (`BrokerInspector`: depths, pages, dead letters per actor);
`dead_letters` their repair (`DeadLetters`: retry or discard, each exactly once);
`_dead_scan` the Lua scripts that count and search a dead-letter set inside Redis (per-actor
counts, an order's dead letter), so 10,000 of them never cross the wire. Import from here.
"""

from worker.inspect._layout import NAMESPACE, WINDOW, BrokerMessage, Page, QueueDepth, State
from worker.inspect.dead_letters import DeadLetters, Repair
from worker.inspect.reader import MAX_DEAD_SCANNED, MAX_FILTER_SCANNED, BrokerInspector

__all__ = [
    "MAX_DEAD_SCANNED",
    "MAX_FILTER_SCANNED",
    "NAMESPACE",
    "WINDOW",
    "BrokerInspector",
    "BrokerMessage",
    "DeadLetters",
    "Page",
    "QueueDepth",
    "Repair",
    "State",
]
