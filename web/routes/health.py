"""Liveness and readiness."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from web.deps import ResourcesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(resources: ResourcesDep) -> JSONResponse:
    """Ready when Postgres and the broker answer; a dead cache only degrades."""
    checks: dict[str, object] = {}
    ready = True
    started = time.perf_counter()
    try:
        with resources.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}
    except Exception as exc:
        ready = False
        checks["database"] = {"ok": False, "error": type(exc).__name__}
    started = time.perf_counter()
    try:
        resources.broker.client.ping()  # type: ignore[attr-defined]
        checks["broker"] = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}
    except Exception as exc:
        ready = False
        checks["broker"] = {"ok": False, "error": type(exc).__name__}
    checks["cache"] = {"degraded": not resources.cache.probe()}
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
