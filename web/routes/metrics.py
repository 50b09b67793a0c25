"""`GET /metrics` (CONTRACT §5): Prometheus text format.

With PROMETHEUS_MULTIPROC_DIR set (as `keysync up` does, and as production should for
several uvicorn workers or a worker on the same host), every process writes its samples
to files there and this endpoint aggregates all of them, so worker job counters and the
scheduler's ticks show up here too. Without it, this process's own registry is served.
"""

from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# Imported for its side effect: metrics declared at import are served before their first
# sample. (`worker._metrics` is not imported here: importing `worker` binds the broker; the
# app's lifespan does that.)
import services.metrics  # noqa: F401

router = APIRouter(tags=["ops"])


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
def metrics() -> Response:
    # prometheus-client itself is configured by this variable (it decides at import where
    # samples go); we only mirror its choice when reading.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
