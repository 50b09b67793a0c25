"""The operations console in a real browser (see conftest): sign-in, the Overview against
`keysync status --json`, a dead letter retried to a completed order, a dead webhook event
replayed, a stuck order's reason, CSRF and non-admin refusals, every page with JavaScript
off, and (KEYSYNC_SCREENSHOTS=1) the README's screenshots."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select, update

from db.models import (
    AdminAction,
    G2APurchase,
    G2APurchaseStatus,
    Order,
    OrderItem,
    OrderStatus,
    WebhookEvent,
)
from g2a_sim.server import SimServer
from keysync.resources import Resources
from services.ops.display import number_text
from services.webhooks.service import sweep
from tests.browser.conftest import ADMIN, make_user, sign_in, text_of
from tests.cli.ops_helpers import cli_process
from tests.helpers import LiveServer, wait_until
from tests.order_flows import dead_letter_fulfilment, place_order
from tests.order_helpers import signed_headers, sim_game, status_body
from worker.enqueue import Actor
from worker.inspect import BrokerInspector, State

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("/admin", "/admin/jobs?state=dead", "/admin/jobs?state=queued", "/admin/syncs",
         "/admin/webhooks", "/admin/orders", "/admin/orders?stuck=1", "/admin/audit")


def _dead_fulfilments(resources: Resources) -> list[str]:
    page = BrokerInspector(resources.broker.client).search(
        (State.DEAD,), actor=Actor.FULFIL_ORDER.value, offset=0, limit=50)
    return [m.message_id for m in page.items]


def _order_status(resources: Resources, order_id: uuid.UUID) -> OrderStatus:
    with resources.sessions() as s:
        status = s.scalar(select(Order.status).where(Order.id == order_id))
        assert status is not None
        return status


def _backdate(resources: Resources, order_id: uuid.UUID, hours: float) -> None:
    then = datetime.now(UTC) - timedelta(hours=hours)
    with resources.sessions() as s, s.begin():
        s.execute(update(Order).where(Order.id == order_id)
                  .values(created_at=then, updated_at=then))


def _dead_fulfilment(resources: Resources, broker: Any, order_id: uuid.UUID) -> None:
    dead_letter_fulfilment(broker, order_id,
                           dead=lambda: len(_dead_fulfilments(resources)) == 1)


def _stuck_with_g2a_refusal(resources: Resources, sim: SimServer) -> uuid.UUID:
    order_id, _ = place_order(resources, [(sim_game(resources.sessions, sim, skip=1), 1)],
                              status=OrderStatus.PROCESSING)
    with resources.sessions() as s, s.begin():
        item_id = s.scalars(select(OrderItem.id).where(OrderItem.order_id == order_id)).one()
        s.execute(insert(G2APurchase).values(
            order_item_id=item_id, unit_index=0, status=G2APurchaseStatus.FAILED,
            last_error="ORD112: not enough funds"))
    _backdate(resources, order_id, 1)
    return order_id


def _values(report: dict[str, Any], path: str) -> Any:
    value: Any = report
    for part in path.split("."):
        if value is None:  # a section that has never had a value (a run kind never run)
            return None
        value = value[part]
    return value


def _shown(value: Any) -> str:
    """A number as the console prints it (the `number` filter; yes/no for a flag)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return number_text(value)


def test_dead_letter_stuck_order_and_overview(
        page: Any, resources: Resources, broker: Any, sim: SimServer,
        request: pytest.FixtureRequest) -> None:
    make_user(resources)
    failing, _ = place_order(resources, [(sim_game(resources.sessions, sim), 1)])
    refused = _stuck_with_g2a_refusal(resources, sim)
    _dead_fulfilment(resources, broker, failing)
    _backdate(resources, failing, 2)

    assert sign_in(page).status == 200
    assert page.url.endswith("/admin")

    # Overview: the numbers `keysync status --json` prints, state by state.
    status = cli_process("status", "--json")
    report = status.json
    page.reload()
    for check in report["checks"]:
        row = f"tr[data-check='{check['name']}']"
        assert text_of(page, f"{row} td:nth-child(2)") == check["state"], check["name"]
    cells = page.query_selector_all("[data-k]")
    assert len(cells) > 20
    for cell in cells:
        key = cell.get_attribute("data-k")
        assert cell.inner_text().strip() == _shown(_values(report, key)), key
    assert text_of(page, "[data-k='dead_letters.fulfil_order']") == "1"
    assert text_of(page, "[data-k='stuck_orders.count']") == "2"
    # Live: htmx (served from the package, no CDN) re-reads the numbers every 5 s.
    with page.expect_response(lambda r: r.url.endswith("/admin/fragments/overview")
                              and r.status == 200, timeout=8_000):
        pass
    assert text_of(page, "[data-k='dead_letters.fulfil_order']") == "1"

    # Stuck orders, each with its reason.
    page.goto("/admin/orders?stuck=1")
    reason = text_of(page, f"tr[data-order='{failing}'] .reason")
    assert "fulfil_order dead-lettered" in reason and "G2A_API_URL" in reason
    assert "ORD112: not enough funds" in text_of(page, f"tr[data-order='{refused}'] .reason")
    page.click(f"tr[data-order='{refused}'] a")
    assert "ORD112" in text_of(page, ".timeline") and "why it is open" in page.content()

    # Jobs -> dead shows the failure; the cause is fixed (a worker that reaches G2A), then
    # "Retry" re-runs it and the order completes.
    page.goto("/admin/jobs?state=dead")
    [message_id] = _dead_fulfilments(resources)
    row = f"tr[data-message='{message_id}']"
    assert "G2A_API_URL" in text_of(page, row)
    request.getfixturevalue("g2a_worker")
    with page.expect_navigation():
        page.click(f"{row} button:has-text('Retry')")
    assert "1 dead job(s) re-enqueued" in text_of(page, ".flash")
    wait_until(lambda: _order_status(resources, failing) is OrderStatus.COMPLETED, 60,
               "retried order completed")
    assert _dead_fulfilments(resources) == []
    page.goto("/admin/audit")
    assert "jobs.retry" in text_of(page, "table") and ADMIN in text_of(page, "table")
    page.goto(f"/admin/orders/{failing}")
    assert "completed" in text_of(page, "section.card").lower()


def test_dead_webhook_is_replayed_from_the_webhooks_page(
        page: Any, resources: Resources, live: LiveServer, sim: SimServer,
        request: pytest.FixtureRequest) -> None:
    make_user(resources)
    request.getfixturevalue("g2a_worker")
    secret = resources.settings.webhook_secrets.get_secret_value().split()[0]
    body = status_body("COMPLETED", external_order_id=f"unknown-{uuid.uuid4().hex[:8]}")
    event_id = f"msg_{uuid.uuid4().hex}"
    answer = httpx.post(live.url + "/webhooks/g2a", content=body,
                        headers=signed_headers(body, msg_id=event_id, secret=secret))
    assert answer.status_code == 202

    def event() -> WebhookEvent:
        with resources.sessions() as s:
            found = s.scalar(select(WebhookEvent).where(WebhookEvent.event_id == event_id))
            assert found is not None
            return found

    wait_until(lambda: event().attempts >= 1, 30, "webhook processed once (an orphan)")
    # The sweeper gives up on it (as after 24 h): a dead event.
    sweep(resources.sessions, resources.broker, min_age_s=3600, dead_after_s=0)
    assert event().outcome == "dead"

    sign_in(page)
    page.goto("/admin/webhooks?outcome=dead")
    assert event_id in text_of(page, f"tr[data-event='{event_id}']")
    page.click(f"tr[data-event='{event_id}'] a")
    assert '"external_order_id"' in text_of(page, "pre.payload")
    assert secret not in page.content()
    with page.expect_navigation():
        page.click("button:has-text('Replay')")
    assert "1 webhook event(s) reset" in text_of(page, ".flash")
    wait_until(lambda: event().outcome not in (None, "dead") and event().attempts >= 1, 30,
               "replayed event processed again")
    with resources.sessions() as s:
        [row] = s.scalars(select(AdminAction)).all()
    assert (row.action, row.actor) == ("webhooks.replay", ADMIN)


def test_refusals_csrf_and_non_admin(browser: Any, page: Any, resources: Resources,
                                     broker: Any, sim: SimServer) -> None:
    make_user(resources)
    make_user(resources, "user@example.com", admin=False)
    order_id, _ = place_order(resources, [(sim_game(resources.sessions, sim), 1)])
    _dead_fulfilment(resources, broker, order_id)
    [message_id] = _dead_fulfilments(resources)

    anonymous = page.goto("/admin/jobs?state=dead")
    assert "/admin/login?next=" in page.url and anonymous.status == 200
    sign_in(page, next_="/admin/jobs%3Fstate%3Ddead")
    assert page.url.endswith("/admin/jobs?state=dead")
    forged = page.request.post("/admin/jobs/discard", form={"id": message_id},
                               max_redirects=0)
    assert forged.status == 403
    wrong = page.request.post("/admin/jobs/retry", form={"id": message_id, "csrf": "x" * 64},
                              max_redirects=0)
    assert wrong.status == 403
    assert _dead_fulfilments(resources) == [message_id]
    with resources.sessions() as s:
        assert s.scalars(select(AdminAction)).all() == []

    other = browser.new_context(base_url=page.url.split("/admin")[0])
    try:
        user_page = other.new_page()
        answer = sign_in(user_page, "user@example.com")
        assert answer.status == 403 and "Forbidden" in user_page.content()
        assert user_page.goto("/admin").status == 303 or "/admin/login" in user_page.url
    finally:
        other.close()


def test_every_page_reads_with_javascript_off(browser: Any, live: LiveServer,
                                              resources: Resources, sim: SimServer) -> None:
    make_user(resources)
    order_id, _ = place_order(resources, [(sim_game(resources.sessions, sim), 1)])
    context = browser.new_context(base_url=live.url, java_script_enabled=False)
    try:
        page = context.new_page()
        assert sign_in(page).status == 200
        for path in (*PAGES, f"/admin/orders/{order_id}"):
            answer = page.goto(path)
            assert answer.status == 200, path
            assert page.inner_text("h1").strip(), path
            assert page.query_selector("main table, main ol"), path
        page.goto("/admin")
        assert "database" in text_of(page, "main") and "Queues" in text_of(page, "main")
    finally:
        context.close()


def test_screenshots_for_the_readme(browser: Any, live: LiveServer, resources: Resources,
                                    sim: SimServer, broker: Any, tmp_path: Path,
                                    request: pytest.FixtureRequest) -> None:
    """Overview and Syncs (chart from real runs) at laptop and phone width. Always taken;
    written to docs/img only with KEYSYNC_SCREENSHOTS=1, so a CI run leaves the tree clean."""
    from jobs.catalog import catalog_sync, stock_check

    make_user(resources)
    worker = request.getfixturevalue("g2a_worker")
    for step in range(6):  # real runs: full syncs around catalog changes, stock checks
        if step in (2, 4):
            httpx.post(sim.url + "/_sim/mutate", json={"changed": 15 * step, "added": 3,
                                                       "removed": step // 2}).raise_for_status()
        if step == 3:
            httpx.post(sim.url + "/_sim/faults", json={"latency_ms": 40, "count": 60})
        if step % 2:
            stock_check.send()
        else:
            catalog_sync.send(True)
        broker.join("default", timeout=60_000)
        worker.join()
    readme = os.environ.get("KEYSYNC_SCREENSHOTS") == "1"
    out = ROOT / "docs" / "img" if readme else tmp_path / "laptop"
    phone = Path(os.environ.get("KEYSYNC_SCREENSHOTS_PHONE") or tmp_path / "phone")
    for width, folder in ((1280, out), (390, phone)):
        folder.mkdir(parents=True, exist_ok=True)
        context = browser.new_context(base_url=live.url,
                                      viewport={"width": width, "height": 900})
        page = context.new_page()
        sign_in(page)
        for path, name in (("/admin", "console-overview.png"),
                           ("/admin/syncs", "console-syncs.png")):
            page.goto(path)
            # Nothing wider than the screen: tables scroll inside their cards.
            assert page.evaluate("document.documentElement.scrollWidth") <= width, (path, width)
            page.screenshot(path=str(folder / name), full_page=True)
            assert (folder / name).stat().st_size > 10_000, (folder / name)
        assert page.query_selector("svg"), "the Syncs chart"
        context.close()
    assert json.loads(cli_process("status", "--json").stdout)["last_runs"]
