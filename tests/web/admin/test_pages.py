"""The console's pages without a browser (TestClient over the real app, Postgres, Redis and
broker): sign-in and its cookie, redirects, 403s, CSRF refusals that change nothing, the
login rate limit, and no key, hash or secret in any page."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dramatiq
import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select, update

from db.models import AdminAction, G2APurchase, G2APurchaseStatus, OrderItem, OrderStatus, User
from jobs import broker as jobs_broker
from keysync.resources import Resources
from services.accounts.auth import create_user
from services.orders import status as order_status
from services.orders.service import LineRequest, create_order
from tests.helpers import stop_worker, wait_until
from tests.order_helpers import make_game, make_user
from web.app import create_app
from worker.inspect import BrokerInspector, State

PASSWORD = "console-pass-123"
KEY = "SECRETKEY-AAAAA-11111"
QUEUE = "test-console-pages"


@dramatiq.actor(broker=jobs_broker, queue_name=QUEUE, max_retries=0)
def _console_probe(token: str) -> None:
    raise RuntimeError(f"cause not fixed for {token}")


def admin_user(resources: Resources, email: str = "ops@example.com", *,
               admin: bool = True) -> uuid.UUID:
    user = create_user(resources.sessions, email=email, password=PASSWORD)
    with resources.sessions() as s, s.begin():
        s.execute(update(User).where(User.id == user.id).values(is_admin=admin))
    return user.id


def login_form(client: TestClient, next_: str = "/admin") -> str:
    page = client.get("/admin/login", params={"next": next_})
    assert page.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


def sign_in(client: TestClient, email: str = "ops@example.com", next_: str = "/admin") -> Any:
    csrf = login_form(client, next_)
    return client.post("/admin/login", data={"email": email, "password": PASSWORD,
                                             "csrf": csrf, "next": next_},
                       follow_redirects=False)


def page_csrf(client: TestClient, path: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert match
    return match.group(1)


@pytest.fixture
def dead_letter(broker: Any) -> Iterator[str]:
    """One real dead letter (a probe failing on a real worker, no retries)."""
    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        message_id = _console_probe.send("page-test").message_id
        wait_until(lambda: dead_ids(broker) == {message_id}, what="probe dead-lettered")
        yield message_id
    finally:
        stop_worker(broker, worker)


def dead_ids(broker: Any) -> set[str]:
    page = BrokerInspector(broker.client).search((State.DEAD,), actor="_console_probe",
                                                 offset=0, limit=50)
    return {m.message_id for m in page.items}


def audit_rows(resources: Resources) -> int:
    with resources.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(AdminAction)) or 0)


# --- sign-in -----------------------------------------------------------------------------


def test_anonymous_is_redirected_to_sign_in_with_next(client: TestClient) -> None:
    for path in ("/admin", "/admin/jobs?state=dead", "/admin/syncs", "/admin/audit"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303, path
        location = urlsplit(r.headers["location"])
        assert location.path == "/admin/login"
        assert parse_qs(location.query)["next"] == [path]
    assert client.post("/admin/jobs/retry", data={"id": "x"},
                       follow_redirects=False).status_code == 303


def test_sign_in_sets_a_strict_http_only_cookie_for_eight_hours(
        resources: Resources, client: TestClient) -> None:
    admin_user(resources)
    r = sign_in(client, next_="/admin/audit")
    assert r.status_code == 303 and r.headers["location"] == "/admin/audit"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("keysync_admin="))
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
    assert "httponly" in flags and "secure" not in flags  # plain http here
    assert flags["samesite"].lower() == "samesite=strict"
    assert flags["max-age"] == "Max-Age=28800" and flags["path"] == "Path=/admin"
    for path in ("/admin", "/admin/jobs", "/admin/syncs", "/admin/webhooks", "/admin/orders",
                 "/admin/orders?stuck=1", "/admin/audit", "/admin/fragments/overview",
                 "/admin/fragments/syncs-running"):
        assert client.get(path).status_code == 200, path
    out = client.post("/admin/logout", data={"csrf": page_csrf(client, "/admin")},
                      follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/admin", follow_redirects=False).status_code == 303


def test_cookie_is_secure_over_https(resources: Resources) -> None:
    admin_user(resources)
    with TestClient(create_app(resources), base_url="https://testserver") as c:
        r = sign_in(c)
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("keysync_admin="))
    assert "secure" in cookie.lower()


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/admin",
                                    "/\\evil.example", "/orders", "javascript:alert(1)"])
def test_next_is_never_an_open_redirect(resources: Resources, client: TestClient,
                                        target: str) -> None:
    admin_user(resources)
    r = sign_in(client, next_=target)
    assert r.status_code == 303 and r.headers["location"] == "/admin"


def test_wrong_password_and_missing_login_csrf(resources: Resources, client: TestClient
                                               ) -> None:
    admin_user(resources)
    csrf = login_form(client)
    bad = client.post("/admin/login", data={"email": "ops@example.com", "password": "nope",
                                            "csrf": csrf})
    assert bad.status_code == 401 and "Wrong email or password" in bad.text
    client.cookies.clear()
    forged = client.post("/admin/login", data={"email": "ops@example.com",
                                               "password": PASSWORD, "csrf": csrf},
                         follow_redirects=False)
    assert forged.status_code == 403
    assert "keysync_admin=" not in forged.headers.get("set-cookie", "")


def test_non_admin_gets_403_and_a_revoked_admin_is_out_at_once(
        resources: Resources, client: TestClient) -> None:
    admin_user(resources, "user@example.com", admin=False)
    refused = sign_in(client, "user@example.com")
    assert refused.status_code == 403 and "for admins" in refused.text
    assert "keysync_admin=" not in refused.headers.get("set-cookie", "")

    user_id = admin_user(resources)
    assert sign_in(client).status_code == 303
    assert client.get("/admin").status_code == 200
    with resources.sessions() as s, s.begin():
        s.execute(update(User).where(User.id == user_id).values(is_admin=False))
    assert client.get("/admin").status_code == 403
    assert client.get("/admin/jobs").status_code == 403


def test_sign_in_is_rate_limited_like_the_api(resources: Resources) -> None:
    limited = Resources.build(resources.settings.model_copy(update={"login_rate_per_min": 2}),
                              resources.broker)
    try:
        admin_user(limited)
        with TestClient(create_app(limited)) as c:
            answers = []
            for _ in range(3):
                csrf = login_form(c)
                answers.append(c.post("/admin/login", data={
                    "email": "ops@example.com", "password": "wrong", "csrf": csrf}))
        assert [a.status_code for a in answers] == [401, 401, 429]
        assert int(answers[-1].headers["retry-after"]) >= 1
        assert "Too many" in answers[-1].text
    finally:
        limited.close()


# --- CSRF --------------------------------------------------------------------------------


def test_posts_without_the_csrf_token_change_nothing(
        resources: Resources, client: TestClient, dead_letter: str, broker: Any) -> None:
    admin_user(resources)
    sign_in(client)
    for data, headers in (({"id": dead_letter}, {}),
                          ({"id": dead_letter, "csrf": "0" * 64}, {}),
                          ({"id": dead_letter}, {"X-CSRF-Token": "forged"})):
        r = client.post("/admin/jobs/retry", data=data, headers=headers, follow_redirects=False)
        assert r.status_code == 403 and "CSRF" in r.text
        r = client.post("/admin/jobs/discard", data=data, headers=headers,
                        follow_redirects=False)
        assert r.status_code == 403
    assert client.post("/admin/webhooks/replay", data={"dead": "1", "confirm": "yes"},
                       follow_redirects=False).status_code == 403
    assert client.post("/admin/logout", follow_redirects=False).status_code == 403
    assert dead_ids(broker) == {dead_letter}
    assert audit_rows(resources) == 0

    # The same form with the page's token acts, once, audited under the admin's email.
    csrf = page_csrf(client, "/admin/jobs?state=dead")
    done = client.post("/admin/jobs/discard", data={"id": dead_letter, "csrf": csrf},
                       follow_redirects=False)
    assert done.status_code == 303 and "done=discarded" in done.headers["location"]
    assert dead_ids(broker) == set()
    with resources.sessions() as s:
        [row] = s.scalars(select(AdminAction)).all()
    assert (row.actor, row.action) == ("ops@example.com", "jobs.discard")
    assert "1 dead job(s) discarded" in client.get(done.headers["location"]).text


def test_all_needs_its_confirmation(resources: Resources, client: TestClient,
                                    dead_letter: str, broker: Any) -> None:
    admin_user(resources)
    sign_in(client)
    csrf = page_csrf(client, "/admin/jobs?state=dead")
    r = client.post("/admin/jobs/discard", data={"all": "1", "csrf": csrf})
    assert "tick the box" in r.text
    assert dead_ids(broker) == {dead_letter} and audit_rows(resources) == 0


# --- nothing secret ----------------------------------------------------------------------


def test_no_key_hash_or_secret_in_any_page(resources: Resources, client: TestClient) -> None:
    admin_user(resources)
    customer = make_user(resources.sessions, "50.00")
    game = make_game(resources.sessions, price="5.00", name="Keyed <b>Game</b>")
    order = create_order(resources.sessions, resources.broker, resources.cache, customer,
                         [LineRequest(game_id=game, quantity=1)])
    fernet = Fernet(resources.settings.key_encryption_key.get_secret_value().encode())
    with resources.sessions() as s, s.begin():
        order_status.apply(s, order.id, OrderStatus.PROCESSING, source="test")
        item_id = s.scalars(select(OrderItem.id).where(OrderItem.order_id == order.id)).one()
        s.execute(insert(G2APurchase).values(
            order_item_id=item_id, unit_index=0, g2a_order_id="g2a-1", transaction_id="tx-1",
            status=G2APurchaseStatus.DELIVERED, key_encrypted=fernet.encrypt(KEY.encode())))
        order_status.apply(s, order.id, OrderStatus.COMPLETED, source="test")
        hashes = [h for h in s.scalars(select(User.password_hash)) if h.startswith("$argon2")]
    assert hashes  # the admin signs in with a real one
    sign_in(client)
    secrets = [KEY, *hashes, resources.settings.jwt_secret.get_secret_value(),
               resources.settings.key_encryption_key.get_secret_value(),
               *resources.settings.webhook_secrets.get_secret_value().split()]
    pages = ["/admin", "/admin/jobs", "/admin/syncs", "/admin/webhooks", "/admin/audit",
             "/admin/orders", f"/admin/orders/{order.id}", "/admin/fragments/overview"]
    for path in pages:
        r = client.get(path)
        assert r.status_code == 200, path
        for secret in secrets:
            assert str(secret) not in r.text, (path, "leaks a secret")
    timeline = client.get(f"/admin/orders/{order.id}").text
    assert "Keyed &lt;b&gt;Game&lt;/b&gt;" in timeline and "<b>Game</b>" not in timeline
    assert "DELIVERED".lower() in timeline


def test_sync_chart_draws_one_dot_per_finished_run_and_escapes_its_tips() -> None:
    from datetime import UTC, datetime, timedelta

    from db.models import SyncKind, SyncStatus
    from services.ops.schemas import SyncChart, SyncChartPoint
    from web.admin.charts import sync_chart

    now = datetime(2026, 1, 31, tzinfo=UTC)
    points = [SyncChartPoint(started_at=now - timedelta(days=d), kind=SyncKind.FULL,
                             status=status, duration_s=duration, changed=changed, removed=removed)
              for d, status, duration, changed, removed in (
                  (20, SyncStatus.SUCCEEDED, 48.0, 120, 0), (10, SyncStatus.PARTIAL, 51.5, 0, 3),
                  (1, SyncStatus.FAILED, 2.0, 0, 0), (0, SyncStatus.RUNNING, None, 5, 0))]
    svg = str(sync_chart(SyncChart(days=30, points=points, total=4), now=now))
    assert svg.startswith("<svg") and svg.count("<circle") == 3  # the running one has no end
    assert svg.count('class="changed"') == 2 and svg.count('class="removed"') == 1
    assert 'class="dot bad"' in svg and 'class="dot warn"' in svg
    assert "100 s" in svg  # the duration axis rounds 51.5 s up to a readable maximum
    assert "<script" not in svg


def test_a_month_of_runs_is_merged_per_column_keeping_the_sums() -> None:
    """3,000 runs (30 days of 15-minute stock checks) on ~700 pixels: one mark per 3-pixel
    column, its bars the sums of its runs, its dot the worst ending among them."""
    import re
    from datetime import UTC, datetime, timedelta

    from db.models import SyncKind, SyncStatus
    from services.ops.schemas import SyncChart, SyncChartPoint
    from web.admin.charts import LEFT, MARK_WIDTH, RIGHT, WIDTH, sync_chart

    now = datetime(2026, 1, 31, tzinfo=UTC)
    points = [SyncChartPoint(started_at=now - timedelta(minutes=15 * (3000 - i)),
                             kind=SyncKind.STOCK,
                             status=SyncStatus.FAILED if i == 1500 else SyncStatus.SUCCEEDED,
                             duration_s=1.0 + i % 7, changed=i % 5, removed=i % 2)
              for i in range(3000)]
    svg = str(sync_chart(SyncChart(days=30, points=points, total=3000), now=now))
    columns = (WIDTH - LEFT - RIGHT) / MARK_WIDTH
    assert columns / 2 < svg.count("<circle") <= columns + 1
    assert len(svg) < 200_000
    tips = re.findall(r'<circle class="dot (\w+)"[^>]*><title>([^<]*)</title>', svg)
    assert sum(int(re.search(r"^(\d+) runs", t).group(1)) if " runs " in t else 1
               for _, t in tips) == 3000
    assert sum(int(re.search(r"(\d+) changed", t).group(1)) for _, t in tips) == sum(
        p.changed for p in points)
    assert [css for css, t in tips if "failed" in t] == ["bad"]
