"""`GET /metrics` (CONTRACT §5): Prometheus text format.

Two parts. The process counters: with PROMETHEUS_MULTIPROC_DIR set (as `keysync up` does,
and as production should for several uvicorn workers or a worker on the same host), every
process writes its samples to files there and this endpoint aggregates all of them, so
worker job counters and the scheduler's ticks show up here too; without it, this process's
own registry is served. And the cluster state (`services.ops.exporter`): queues, dead
letters, workers, outboxes, webhooks, stuck orders, syncs, read from Postgres and Redis at
scrape time (cached briefly), so one scrape of any web process sees the whole cluster.
"""

from __future__ import annotations

import os
import threading

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# Imported for its side effect: metrics declared at import are served before their first
# sample. (`worker._metrics` is not imported here: importing `worker` binds the broker; the
# app's lifespan does that.)
import services.metrics  # noqa: F401
from keysync.resources import Resources
from services.ops.exporter import StateCollector
from services.ops.snapshot import Snapshot, Sources, Thresholds, gather
from web.deps import ResourcesDep

router = APIRouter(tags=["ops"])

# How long one read of the shared state serves scrapes (Prometheus scrapes every 15-60 s).
STATE_TTL_S = 10.0

_build_lock = threading.Lock()


def state_registry(request: Request, resources: Resources) -> CollectorRegistry:
    """The app's registry of cluster-state gauges (one collector, hence one cache, per app)."""
    state = request.app.state
    with _build_lock:
        registry: CollectorRegistry | None = getattr(state, "state_registry", None)
        if registry is None:
            registry = CollectorRegistry(auto_describe=False)
            state.state_collector = StateCollector(lambda: take_snapshot(resources),
                                                   ttl_s=STATE_TTL_S)
            registry.register(state.state_collector)
            state.state_registry = registry
    return registry


def take_snapshot(resources: Resources) -> Snapshot:
    sources = Sources(engine=resources.engine, sessions=resources.sessions,
                      cache_redis=resources.redis, broker_redis=resources.broker.client)
    thresholds = Thresholds(order_stuck_after_s=resources.settings.order_stuck_after_s)
    return gather(sources, thresholds=thresholds)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
def metrics(request: Request, resources: ResourcesDep) -> Response:
    # prometheus-client itself is configured by this variable (it decides at import where
    # samples go); we only mirror its choice when reading.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    body = generate_latest(registry) + generate_latest(state_registry(request, resources))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
