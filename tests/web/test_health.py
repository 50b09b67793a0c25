"""Liveness and readiness: a dead cache degrades, a dead database is not ready."""

from __future__ import annotations

from fastapi.testclient import TestClient

from keysync.resources import Resources
from web.app import create_app


def test_ready_with_everything_up(resources) -> None:
    client = TestClient(create_app(resources))
    assert client.get("/healthz").json() == {"status": "ok"}
    body = client.get("/readyz").json()
    assert body["ready"] is True
    assert body["checks"]["cache"] == {"degraded": False}


def test_dead_cache_is_degraded_but_ready(settings, broker, dead_redis_url) -> None:
    res = Resources.build(settings.model_copy(update={"redis_url": dead_redis_url}), broker)
    try:
        response = TestClient(create_app(res)).get("/readyz")
        assert response.status_code == 200
        assert response.json()["checks"]["cache"] == {"degraded": True}
    finally:
        res.close()


def test_dead_database_is_not_ready(settings, broker, dead_redis_url) -> None:
    port = dead_redis_url.rsplit(":", 1)[1].split("/")[0]
    res = Resources.build(settings.model_copy(
        update={"database_url": f"postgresql+psycopg://u@127.0.0.1:{port}/x"}), broker)
    try:
        response = TestClient(create_app(res)).get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["database"]["ok"] is False
        assert "Traceback" not in response.text
    finally:
        res.close()
