"""Prometheus metrics shared by every process (web, worker, scheduler).

Worker processes write to PROMETHEUS_MULTIPROC_DIR when it is set, so `GET /metrics`
on the web process can aggregate them (prometheus-client multiprocess mode).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CACHE_REQUESTS = Counter(
    "keysync_cache_requests_total", "Cache reads by result", ["result"]
)  # hit | miss | bypass (degraded)
CACHE_INVALIDATION_SECONDS = Histogram(
    "keysync_cache_invalidation_seconds",
    "Latency of one invalidation call",
    ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
CACHE_INVALIDATIONS_DEFERRED = Counter(
    "keysync_cache_invalidations_deferred_total", "Invalidations written to the outbox"
)

SCHEDULER_TICKS = Counter(
    "keysync_scheduler_ticks_total",
    "Scheduler firings per job by outcome",
    ["job", "outcome"],
)  # fired | duplicate | standby (skipped) | lost_leadership | failed
# livesum: in multiprocess mode the sum over live processes = leaders reporting here.
SCHEDULER_IS_LEADER = Gauge(
    "keysync_scheduler_leader",
    "1 while this scheduler process holds the leader lock",
    multiprocess_mode="livesum",
)
# Seconds this scheduler's clock is ahead of Redis's TIME (negative: behind); beyond
# worker.election.MAX_CLOCK_SKEW_S the process refuses to lead.
SCHEDULER_CLOCK_SKEW = Gauge(
    "keysync_scheduler_clock_skew_seconds",
    "This scheduler process's clock minus Redis's TIME, measured every election round",
    multiprocess_mode="liveall",
)

# Declared here for the modules that own these events (G2A client, webhook inbox, catalog
# sync) so every series exists in every process; each owner increments its own.
G2A_REQUESTS = Counter(
    "keysync_g2a_requests_total",
    "G2A Export API responses by endpoint (route template) and HTTP status",
    ["endpoint", "status"],
)  # status "error" for transport failures (no response)
G2A_RATE_LIMITED = Counter(
    "keysync_g2a_rate_limited_total",
    "G2A 429 BR03 answers, by endpoint (also counted in keysync_g2a_requests_total)",
    ["endpoint"],
)
G2A_REQUEST_SECONDS = Histogram(
    "keysync_g2a_request_seconds",
    "G2A Export API request latency",
    ["endpoint"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WEBHOOK_EVENTS = Counter(
    "keysync_webhook_events_total",
    "Webhook deliveries and their processing, by outcome",
    ["outcome"],
)  # accepted | duplicate | bad_signature | bad_request | too_large | processed | orphan | dead
WEBHOOK_BATCH_EVENTS = Histogram(
    "keysync_webhook_batch_events",
    "Events per group-committed webhook batch (batches of two or more)",
    buckets=(2, 4, 8, 16, 32, 64),
)
SYNC_PRODUCTS = Counter(
    "keysync_sync_products_total",
    "Products seen by catalog syncs and stock checks, by outcome",
    ["kind", "outcome"],
)  # kind full|incremental|stock; outcome added|updated|unchanged|removed|error
