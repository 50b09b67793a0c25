"""`keysync webhooks` and `webhooks replay`: the inbox by outcome, a dead event replayed
through the real processing path (worker.enqueue → a real worker), idempotently."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import dramatiq
from sqlalchemy import update

from db.models import OrderStatus, WebhookEvent
from keysync.resources import Resources
from services.webhooks import intake
from tests.cli.ops_helpers import admin_actions, assert_one_audited, cli, cli_process
from tests.helpers import stop_worker, wait_until
from tests.order_flows import order_row, place_order, refunds
from tests.order_helpers import balance, make_game, status_body

EVENT_KEYS = {"event_id", "type", "status", "received_at", "outcome", "attempts"}


def store(resources: Resources, body: bytes) -> str:
    event_id = f"msg_{uuid.uuid4().hex}"
    assert intake.store(resources.sessions, resources.broker, event_id,
                        intake.parse(body)).status == "accepted"
    return event_id


def inbox(*args: str) -> dict[str, Any]:
    run = cli("webhooks", *args, "--json")
    assert run.code == 0, run.stderr
    return run.json


def by_id(listing: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["event_id"]: item for item in listing["items"]}


def test_dead_event_is_listed_and_replayed_once(
    resources: Resources, broker: Any, redis_client: Any, sessions: Any
) -> None:
    game = make_game(resources.sessions, price="25.00")
    order_id, user_id = place_order(resources, [(game, 1)], funds="100.00",
                                    status=OrderStatus.PROCESSING)
    failed = store(resources, status_body("FAILED", order_id=order_id))
    hopeless = store(resources, status_body("FAILED", external_order_id="never-known"))
    pending = store(resources, status_body("CANCELLED", order_id=order_id))
    # What the sweeper leaves after 50 failed attempts.
    with resources.sessions() as s, s.begin():
        s.execute(update(WebhookEvent).where(WebhookEvent.event_id.in_([failed, hopeless]))
                  .values(outcome="dead", attempts=50, last_error="OperationalError('gone')"))
    # Nobody has consumed anything yet; the jobs already queued are not this test's.
    redis_client.delete("dramatiq:default", "dramatiq:default.msgs")

    everything = inbox()
    assert everything["total"] == 3
    item = by_id(everything)[failed]
    assert EVENT_KEYS | {"order_id", "last_error"} == set(item)
    assert (item["type"], item["order_id"], item["status"], item["outcome"],
            item["attempts"]) == ("order.status_changed", str(order_id), "FAILED", "dead", 50)
    assert by_id(everything)[hopeless]["external_order_id"] == "never-known"
    assert "order_id" not in by_id(everything)[hopeless]
    assert set(by_id(inbox("--outcome", "dead"))) == {failed, hopeless}
    assert set(by_id(inbox("--outcome", "pending"))) == {pending}
    assert inbox("--outcome", "processed") == {"items": [], "total": 0}
    assert len(inbox("--limit", "1")["items"]) == 1

    replayed = cli_process("webhooks", "replay", failed, "--json")
    assert replayed.code == 0, replayed.stderr
    assert replayed.json == {"replayed": 1}
    row = assert_one_audited(replayed, sessions, "webhooks.replay")
    assert row.detail["ids"] == [failed] and failed in row.target
    reset = by_id(inbox())[failed]
    assert (reset["outcome"], reset["attempts"]) == ("pending", 0)
    assert redis_client.llen("dramatiq:default") == 1  # queued through worker.enqueue

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        wait_until(lambda: by_id(inbox())[failed]["outcome"] == "processed",
                   what="replayed event processed")
        assert order_row(resources, order_id).status is OrderStatus.FAILED
        assert balance(resources.sessions, user_id) == Decimal("100.00")  # refunded once
        assert "last_error" not in by_id(inbox())[failed]

        # Idempotent: a processed event is not reset again, nothing is queued.
        again = cli("webhooks", "replay", failed, "--json")
        assert again.code == 0 and again.json == {"replayed": 0}

        every_dead = cli_process("webhooks", "replay", "--dead", "--json")
        assert every_dead.code == 0 and every_dead.json == {"replayed": 1}, every_dead.stderr
        assert every_dead.admin_action_logs()[0]["detail"]["ids"] == [hopeless]
        # Its order is still unknown: processed again, it is an orphan, kept.
        wait_until(lambda: by_id(inbox())[hopeless]["outcome"] == "orphan",
                   what="replayed orphan")
        worker.join()
    finally:
        stop_worker(broker, worker)
    assert refunds(resources, order_id) == 1
    assert [r.action for r in admin_actions(sessions)] == ["webhooks.replay"] * 3
    assert [r.detail["count"] for r in admin_actions(sessions)] == [1, 0, 1]


def test_replay_refusals_exit_2_and_change_nothing(resources: Resources, sessions: Any
                                                  ) -> None:
    known = store(resources, status_body("FAILED", external_order_id="x"))
    for args, message in [
        (("webhooks", "replay", known, "nope", "--json"), "not webhook events: nope"),
        (("webhooks", "replay", "--json"), "event ids or --dead"),
        (("webhooks", "replay", known, "--dead", "--json"), "event ids or --dead"),
    ]:
        run = cli(*args)
        assert run.code == 2, (args, run.stdout)
        assert message in run.json["error"]
    assert cli("webhooks", "--outcome", "lost").code == 2
    assert admin_actions(sessions) == []
    assert by_id(inbox())[known]["outcome"] == "pending"
