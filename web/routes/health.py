"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.ops.probes import Probe, probe_database, probe_redis
from web.deps import ResourcesDep

router = APIRouter(tags=["health"])


class Liveness(BaseModel):
    status: str


class ProbeCheck(BaseModel):
    """`ms` when the dependency answered, else `error` (an exception type, never a message:
    this endpoint is public and messages may name hosts)."""

    ok: bool
    ms: float | None = None
    error: str | None = None


class CacheCheck(BaseModel):
    degraded: bool


class ReadyChecks(BaseModel):
    database: ProbeCheck
    broker: ProbeCheck
    cache: CacheCheck


class Readiness(BaseModel):
    ready: bool
    checks: ReadyChecks


@router.get("/healthz", response_model=Liveness)
async def healthz() -> Liveness:
    # On the event loop, not the thread pool: "up" means the process answers, even while
    # every pool thread is busy (a login burst waiting for hashing slots).
    return Liveness(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Postgres or the broker is down"}},
)
def readyz(resources: ResourcesDep) -> JSONResponse:
    """Ready when Postgres and the broker answer; a dead cache only degrades."""
    database = probe_database(resources.engine)
    broker = probe_redis(resources.broker.client)
    ready = database.ok and broker.ok
    checks = ReadyChecks(
        database=_check(database),
        broker=_check(broker),
        cache=CacheCheck(degraded=not resources.cache.probe()),
    )
    body = Readiness(ready=ready, checks=checks).model_dump(mode="json", exclude_none=True)
    return JSONResponse(body, status_code=200 if ready else 503)


def _check(probe: Probe) -> ProbeCheck:
    if probe.ok:
        return ProbeCheck(ok=True, ms=probe.latency_ms)
    return ProbeCheck(ok=False, error=probe.error_type)
