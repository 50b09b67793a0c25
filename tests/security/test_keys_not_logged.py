"""Game keys (and secrets) never appear in logs: a real worker process at DEBUG fulfils
orders whose keys the simulator issued, the web app serves them decrypted, and every log
line of both is searched for the key strings."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from db.models import Order, OrderStatus
from g2a_sim.server import SimServer
from services.accounts import tokens
from tests.faults.support import g2a_env, processes, start_worker, wait_until
from tests.order_helpers import make_user, sim_game, sim_server
from web.app import create_app


@pytest.fixture
def sim() -> Any:
    with sim_server() as server:
        yield server


def test_keys_and_secrets_never_logged(
    resources: Any, sim: SimServer, redis_client: Any, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, figures: Any,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = resources.settings
    app = TestClient(create_app(resources))
    secret = settings.jwt_secret.get_secret_value()
    games = [sim_game(resources.sessions, sim, skip=i) for i in range(2)]
    env = {**g2a_env(sim), "LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json"}
    with processes() as procs:
        procs.append(worker := start_worker(tmp_path, redis_client, env))
        placed = []
        for game in games:
            user_id = make_user(resources.sessions, "200.00")
            auth = {"Authorization": f"Bearer {tokens.issue(user_id, secret, 600)}"}
            response = app.post("/orders", json={"items": [{"game_id": str(game),
                                                           "quantity": 2}]}, headers=auth)
            assert response.status_code == 201
            placed.append((uuid.UUID(response.json()["id"]), auth))

        def completed() -> bool:
            with resources.sessions() as s:
                return all(s.get(Order, oid).status is OrderStatus.COMPLETED  # type: ignore[union-attr]
                           for oid, _ in placed)

        wait_until(completed, 30, "orders fulfilled")
        shown = []
        for order_id, auth in placed:  # the customer reads the keys (decrypted) twice
            for _ in range(2):
                body = app.get(f"/orders/{order_id}", headers=auth).json()
                shown += body["keys"]
            shown += [k for o in app.get("/orders", headers=auth).json()["items"]
                      for k in o["keys"]]
        figures.requests += 2 + 8
    issued = {o.key for o in sim.state.orders.values() if o.key}
    assert len(issued) == 4 and set(shown) == issued

    worker_log = worker.log_path.read_text(errors="replace")
    assert "g2a key stored" in worker_log  # the worker did log the deliveries, at DEBUG
    ours = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records
                     if not r.name.startswith("g2a_sim"))  # the simulator is G2A, not us
    assert "order created" in ours
    secrets = {
        "JWT_SECRET": secret,
        "KEY_ENCRYPTION_KEY": settings.key_encryption_key.get_secret_value(),
        "G2A_API_SECRET": sim.config.api_secret,
        **{f"WEBHOOK_SECRETS[{i}]": s.removeprefix("whsec_")
           for i, s in enumerate(settings.webhook_secrets.get_secret_value().split())},
    }
    for name, text in (("worker", worker_log), ("web and services", ours)):
        for key in issued:
            assert key not in text, f"a game key appears in the {name} log"
        for secret_name, value in secrets.items():
            assert value not in text, f"{secret_name} appears in the {name} log"
