"""`/admin/api/*` (CONTRACT §8): the console's JSON twins over real Postgres, Redis and
dramatiq dead letters, with an admin's bearer token; a non-admin is 403, nobody 401."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import insert, select, update

from db.models import (
    AdminAction,
    G2APurchase,
    G2APurchaseStatus,
    Order,
    OrderItem,
    OrderStatus,
    SyncKind,
    SyncRun,
    SyncStatus,
    User,
    WebhookEvent,
)
from keysync.resources import Resources
from services.catalog import SYNC_PROGRESS
from services.locks import SYNC_LOCK
from services.ops.schemas import StatusReport
from services.webhooks import intake
from tests.cli.ops_helpers import cli

# The failing probe of the CLI's tests: it fails until FIXED exists, then records its run.
from tests.cli.test_ops_jobs import FIXED, QUEUE, RAN, _ops_probe
from tests.helpers import stop_worker, wait_until
from tests.order_flows import place_order
from tests.order_helpers import make_game, make_user, status_body
from tests.web.admin.api_helpers import bearer, make_admin

GETS = ["/admin/api/overview", "/admin/api/jobs", "/admin/api/syncs",
        "/admin/api/syncs/chart", "/admin/api/webhooks", "/admin/api/orders",
        "/admin/api/audit"]
POSTS = [("/admin/api/jobs/retry", {"all": True}), ("/admin/api/jobs/discard", {"all": True}),
         ("/admin/api/webhooks/replay", {"dead": True})]


@pytest.fixture
def admin(resources: Resources) -> tuple[dict[str, str], str]:
    user_id, email = make_admin(resources)
    return bearer(resources, user_id), email


def dead_letters(client: TestClient, auth: dict[str, str]) -> dict[str, Any]:
    answer = client.get("/admin/api/jobs", params={"state": "dead"}, headers=auth)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def make_dead(broker: Any, client: TestClient, auth: dict[str, str], *tokens: str
              ) -> list[str]:
    """Probes that really fail twice in a real worker until dramatiq dead-letters them."""
    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        sent = [_ops_probe.send(token).message_id for token in tokens]
        wait_until(lambda: {i["message_id"] for i in dead_letters(client, auth)["items"]}
                   >= set(sent), what="probes dead-lettered")
    finally:
        stop_worker(broker, worker)
    return sent


def audit_rows(resources: Resources) -> list[AdminAction]:
    with resources.sessions() as s:
        return list(s.scalars(select(AdminAction).order_by(AdminAction.id)))


def test_every_twin_needs_an_admin_token(resources: Resources, client: TestClient,
                                         admin: tuple[dict[str, str], str]) -> None:
    auth, _ = admin
    not_admin = bearer(resources, make_user(resources.sessions))
    gone = bearer(resources, uuid.uuid4())  # a valid token whose user no longer exists
    for path in GETS:
        assert client.get(path, headers=auth).status_code == 200, path
        nobody = client.get(path)
        assert nobody.status_code == 401 and nobody.headers["WWW-Authenticate"] == "Bearer"
        assert client.get(path, headers={"Authorization": "Bearer nonsense"}).status_code == 401
        assert client.get(path, headers={"Authorization": "Basic abc"}).status_code == 401
        assert client.get(path, headers=gone).status_code == 401
        refused = client.get(path, headers=not_admin)
        assert refused.status_code == 403, path
        assert refused.json()["error"]["code"] == "forbidden"
    for path, body in POSTS:
        assert client.post(path, json=body).status_code == 401
        assert client.post(path, json=body, headers=not_admin).status_code == 403
    assert audit_rows(resources) == []  # nothing refused was done or recorded


def test_a_revoked_admin_is_refused_at_once(resources: Resources, client: TestClient) -> None:
    user_id, _ = make_admin(resources)
    auth = bearer(resources, user_id)
    assert client.get("/admin/api/audit", headers=auth).status_code == 200
    with resources.sessions() as s, s.begin():
        s.execute(update(User).where(User.id == user_id).values(is_admin=False))
    assert client.get("/admin/api/audit", headers=auth).status_code == 403


def test_overview_is_the_status_report(client: TestClient,
                                       admin: tuple[dict[str, str], str]) -> None:
    auth, _ = admin
    twin = client.get("/admin/api/overview", headers=auth).json()
    status = cli("status", "--json")
    assert status.code in (0, 1), status.stderr
    printed = status.json
    assert set(twin) == set(printed)
    StatusReport.model_validate(twin)  # the documented shape
    assert [c["name"] for c in twin["checks"]] == [c["name"] for c in printed["checks"]]
    for section in ("dead_letters", "stuck_orders", "job_outbox", "removal_guard"):
        assert twin[section] == printed[section], section


def test_dead_letters_retried_and_discarded_with_the_admin_as_actor(
    resources: Resources, broker: Any, redis_client: Any, client: TestClient,
    admin: tuple[dict[str, str], str],
) -> None:
    auth, email = admin
    first, second, _ = make_dead(broker, client, auth, "a", "b", "c")
    listed = dead_letters(client, auth)
    assert listed["total"] == 3
    item = next(i for i in listed["items"] if i["message_id"] == first)
    assert (item["actor"], item["args"], item["state"]) == ("_ops_probe", ["a"], "dead")
    assert item["last_error"] == "RuntimeError: G2A unreachable for a"
    page = client.get("/admin/api/jobs", params={"state": "dead", "limit": 1, "offset": 1},
                      headers=auth).json()
    assert page["total"] == 3 and len(page["items"]) == 1
    assert page["items"][0]["message_id"] == listed["items"][1]["message_id"]
    by_actor = client.get("/admin/api/jobs", params={"actor": "fulfil_order"}, headers=auth)
    assert by_actor.json() == {"items": [], "total": 0}

    redis_client.set(FIXED, 1)  # the cause is repaired
    retried = client.post("/admin/api/jobs/retry", json={"ids": [first]}, headers=auth)
    assert retried.status_code == 200 and retried.json() == {"retried": 1}
    [row] = audit_rows(resources)
    assert (row.actor, row.action, row.detail["ids"]) == (email, "jobs.retry", [first])

    discarded = client.post("/admin/api/jobs/discard",
                            json={"all": True, "actor": "_ops_probe"}, headers=auth)
    assert discarded.json() == {"discarded": 2}
    assert [(r.actor, r.action) for r in audit_rows(resources)] == [
        (email, "jobs.retry"), (email, "jobs.discard")]
    assert dead_letters(client, auth)["total"] == 0

    # The retried one runs once the cause is fixed; the discarded ones never do.
    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        wait_until(lambda: redis_client.lrange(RAN, 0, -1) == [b"a"], what="retried run")
    finally:
        stop_worker(broker, worker)

    # Refusals change nothing and write no audit row.
    for body in ({}, {"ids": ["x"], "all": True}, {"ids": [second]}, {"all": 1.5},
                 {"ids": [], "surprise": True}):
        refused = client.post("/admin/api/jobs/retry", json=body, headers=auth)
        assert refused.status_code == 422, (body, refused.text)
    assert len(audit_rows(resources)) == 2


def test_dead_webhook_is_replayed(resources: Resources, redis_client: Any,
                                  client: TestClient, admin: tuple[dict[str, str], str]) -> None:
    auth, email = admin
    game = make_game(resources.sessions, price="5.00")
    order_id, _ = place_order(resources, [(game, 1)], status=OrderStatus.PROCESSING)
    event_id = f"msg_{uuid.uuid4().hex}"
    intake.store(resources.sessions, resources.broker, event_id,
                 intake.parse(status_body("FAILED", order_id=order_id)))
    with resources.sessions() as s, s.begin():
        s.execute(update(WebhookEvent).where(WebhookEvent.event_id == event_id)
                  .values(outcome="dead", attempts=50, last_error="OperationalError('gone')"))
    redis_client.delete("dramatiq:default", "dramatiq:default.msgs")

    dead = client.get("/admin/api/webhooks", params={"outcome": "dead"}, headers=auth).json()
    assert [(i["event_id"], i["order_id"], i["outcome"], i["attempts"])
            for i in dead["items"]] == [(event_id, str(order_id), "dead", 50)]
    assert client.get("/admin/api/webhooks", params={"outcome": "processed"},
                      headers=auth).json() == {"items": [], "total": 0}

    replayed = client.post("/admin/api/webhooks/replay", json={"dead": True}, headers=auth)
    assert replayed.status_code == 200 and replayed.json() == {"replayed": 1}
    [row] = audit_rows(resources)
    assert (row.actor, row.action, row.detail["ids"]) == (email, "webhooks.replay", [event_id])
    [item] = client.get("/admin/api/webhooks", headers=auth).json()["items"]
    assert (item["outcome"], item["attempts"]) == ("pending", 0)
    assert redis_client.llen("dramatiq:default") == 1  # process_webhook_event queued
    unknown = client.post("/admin/api/webhooks/replay", json={"event_ids": ["nope"]},
                          headers=auth)
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "not_found"
    assert len(audit_rows(resources)) == 1

    trail = client.get("/admin/api/audit", headers=auth).json()
    assert trail["total"] == 1
    assert set(trail["items"][0]) == {"id", "actor", "action", "target", "detail",
                                      "created_at"}


def test_orders_and_a_timeline_without_keys(resources: Resources, client: TestClient,
                                            admin: tuple[dict[str, str], str]) -> None:
    auth, _ = admin
    game = make_game(resources.sessions, price="4.00")
    delivered, _ = place_order(resources, [(game, 2)], status=OrderStatus.PROCESSING)
    stuck, _ = place_order(resources, [(game, 1)])
    fernet = Fernet(resources.settings.key_encryption_key.get_secret_value().encode())
    keys = ["SECRETKEY-AAAA-1111", "SECRETKEY-BBBB-2222"]
    with resources.sessions() as s, s.begin():
        item_id = s.scalars(select(OrderItem.id).where(OrderItem.order_id == delivered)).one()
        s.execute(insert(G2APurchase), [
            {"order_item_id": item_id, "unit_index": unit, "g2a_order_id": f"g2a-{unit}",
             "transaction_id": f"tx-{unit}", "price": "3.90",
             "status": G2APurchaseStatus.DELIVERED,
             "key_encrypted": fernet.encrypt(key.encode())}
            for unit, key in enumerate(keys)])
        s.execute(update(Order).where(Order.id == delivered)
                  .values(status=OrderStatus.COMPLETED))
        s.execute(update(Order).where(Order.id == stuck)
                  .values(created_at=datetime.now(UTC) - timedelta(hours=2)))
    event_id = f"msg_{uuid.uuid4().hex}"
    intake.store(resources.sessions, resources.broker, event_id,
                 intake.parse(status_body("COMPLETED", external_order_id="g2a-1")))

    answer = client.get(f"/admin/api/orders/{delivered}", headers=auth)
    assert answer.status_code == 200
    for key in keys:
        assert key not in answer.text
        assert key.split("-")[1] not in answer.text  # not even a part of it
    body = answer.json()
    assert body["order"]["status"] == "COMPLETED" and body["order"]["total"] == "8.00"
    assert body["items"][0]["keys_stored"] == 2 and body["items"][0]["quantity"] == 2
    kinds = [e["kind"] for e in body["entries"]]
    assert kinds.count("g2a_purchase") == 2 and kinds.count("transaction") == 1
    assert [e["event_id"] for e in body["entries"] if e["kind"] == "webhook_event"] == [event_id]
    assert [e["at"] for e in body["entries"]] == sorted(e["at"] for e in body["entries"])
    assert "reason" not in body

    open_one = client.get(f"/admin/api/orders/{stuck}", headers=auth).json()
    assert "no G2A order yet" in open_one["reason"]
    missing = client.get(f"/admin/api/orders/{uuid.uuid4()}", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert client.get("/admin/api/orders/not-a-uuid", headers=auth).status_code == 422

    listed = client.get("/admin/api/orders", headers=auth).json()
    assert listed["total"] == 2
    stuck_list = client.get("/admin/api/orders", params={"stuck": "true"}, headers=auth).json()
    assert [i["id"] for i in stuck_list["items"]] == [str(stuck)]
    assert "no G2A order yet" in stuck_list["items"][0]["reason"]
    completed = client.get("/admin/api/orders", params={"status": "COMPLETED"},
                           headers=auth).json()
    assert [i["id"] for i in completed["items"]] == [str(delivered)]
    assert client.get("/admin/api/orders", params={"status": "LOST"},
                      headers=auth).status_code == 422


def test_syncs_history_chart_and_running(resources: Resources, redis_client: Any,
                                         client: TestClient,
                                         admin: tuple[dict[str, str], str]) -> None:
    auth, _ = admin
    now = datetime.now(UTC)
    with resources.sessions() as s, s.begin():
        s.execute(insert(SyncRun), [
            {"kind": SyncKind.FULL, "status": SyncStatus.SUCCEEDED, "fence_token": 1,
             "started_at": now - timedelta(days=40), "finished_at": now - timedelta(days=40),
             "added": 1},
            {"kind": SyncKind.STOCK, "status": SyncStatus.FAILED, "fence_token": 2,
             "started_at": now - timedelta(hours=2),
             "finished_at": now - timedelta(hours=2) + timedelta(seconds=3),
             "error_detail": "G2A unreachable"},
        ])
        running_id = s.execute(insert(SyncRun).values(
            kind=SyncKind.FULL, status=SyncStatus.RUNNING, fence_token=3,
            started_at=now - timedelta(seconds=30)).returning(SyncRun.id)).scalar_one()
    empty = client.get("/admin/api/syncs", headers=auth).json()
    assert empty["running"] is None and empty["total"] == 3  # nobody holds the lock

    redis_client.set(SYNC_LOCK, "host-a:4242:" + "ab" * 16, px=60_000)
    redis_client.hset(SYNC_PROGRESS, mapping={
        "run_id": str(running_id), "kind": "full", "status": "running", "pages_done": 7,
        "pages_total": 20, "added": 3, "updated": 40, "unchanged": 97, "removed": 0,
        "errors": 0, "requests": 8, "finished": 0})
    body = client.get("/admin/api/syncs", headers=auth).json()
    assert [i["status"] for i in body["items"]] == ["running", "failed", "succeeded"]
    assert body["items"][1]["duration_s"] == 3.0
    assert body["items"][1]["error_detail"] == "G2A unreachable"
    running = body["running"]
    assert running["run_id"] == str(running_id) and running["holder"] == "host-a:4242:abababab"
    assert running["progress"]["pages_done"] == 7 and running["progress"]["pages_total"] == 20
    assert 29 <= running["running_s"] < 120
    only_stock = client.get("/admin/api/syncs", params={"kind": "stock"}, headers=auth).json()
    assert [i["kind"] for i in only_stock["items"]] == ["stock"]

    chart = client.get("/admin/api/syncs/chart", headers=auth).json()
    assert chart["days"] == 30 and chart["total"] == 2  # the 40-day-old run is outside
    assert [p["status"] for p in chart["points"]] == ["failed", "running"]  # oldest first
    assert "duration_s" not in chart["points"][1]  # still running
    assert client.get("/admin/api/syncs/chart", params={"days": 60},
                      headers=auth).json()["total"] == 3
    assert client.get("/admin/api/syncs/chart", params={"days": 0},
                      headers=auth).status_code == 422


@pytest.mark.parametrize("path", [p for p in GETS if p not in (
    "/admin/api/overview", "/admin/api/syncs/chart")])
def test_pagination_bounds(client: TestClient, admin: tuple[dict[str, str], str],
                           path: str) -> None:
    auth, _ = admin
    for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "many"}):
        answer = client.get(path, params=params, headers=auth)
        assert answer.status_code == 422, (path, params)
        assert answer.json()["error"]["code"] == "invalid_request"
    assert client.get(path, params={"limit": 1000, "offset": 5}, headers=auth).status_code == 200
