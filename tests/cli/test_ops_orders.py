"""`keysync orders [--status S] [--stuck]`: stuck orders with the reason, from a fulfilment
that really failed until dramatiq dead-lettered it, and from what G2A answered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, text, update

from db.models import G2APurchase, G2APurchaseStatus, Order, OrderItem, OrderStatus
from keysync.resources import Resources
from services.ops.stuck_orders import list_orders
from tests.cli.ops_helpers import cli, cli_process
from tests.order_flows import dead_letter_fulfilment, place_order
from tests.order_helpers import make_game

ORDER_KEYS = {"id", "user_email", "status", "total", "created_at", "updated_at"}


def orders(*args: str) -> dict[str, Any]:
    run = cli("orders", *args, "--json")
    assert run.code == 0, run.stderr
    return run.json


def backdate(resources: Resources, order_id: Any, hours: float) -> None:
    with resources.sessions() as s, s.begin():
        s.execute(update(Order).where(Order.id == order_id).values(
            created_at=datetime.now(UTC) - timedelta(hours=hours),
            updated_at=datetime.now(UTC) - timedelta(hours=hours)))


def test_stuck_orders_with_their_reasons(resources: Resources, broker: Any,
                                         redis_client: Any) -> None:
    game = make_game(resources.sessions, price="10.00")
    dead_one, _ = place_order(resources, [(game, 1)])
    g2a_refused, _ = place_order(resources, [(game, 2)], status=OrderStatus.PROCESSING)
    fresh, _ = place_order(resources, [(game, 1)])
    done, _ = place_order(resources, [(game, 1)], status=OrderStatus.FAILED)
    for order_id, hours in ((dead_one, 2), (g2a_refused, 1), (done, 3)):
        backdate(resources, order_id, hours)
    with resources.sessions() as s, s.begin():
        item_id = s.query(OrderItem.id).filter(OrderItem.order_id == g2a_refused).scalar()
        s.execute(insert(G2APurchase), [
            {"order_item_id": item_id, "unit_index": 0, "g2a_order_id": "g2a-1",
             "status": G2APurchaseStatus.PAID},
            {"order_item_id": item_id, "unit_index": 1, "status": G2APurchaseStatus.FAILED,
             "last_error": "ORD112: not enough funds"},
        ])
    dead_letter_fulfilment(
        broker, dead_one,
        dead=lambda: cli("jobs", "--state", "dead", "--json").json["total"] == 1)

    stuck = orders("--stuck")
    assert stuck["total"] == 2
    assert [i["id"] for i in stuck["items"]] == [str(dead_one), str(g2a_refused)]  # longest first
    first, second = stuck["items"]
    assert set(first) == ORDER_KEYS | {"stuck_for_s", "reason"}
    assert first["status"] == "PENDING" and first["total"] == "10.00"
    assert first["user_email"].endswith("@example.com")
    assert 2 * 3600 - 60 <= first["stuck_for_s"] <= 2 * 3600 + 60
    assert "fulfil_order dead-lettered" in first["reason"]
    assert "after 2 attempts" in first["reason"]
    assert "G2A_API_URL" in first["reason"]  # the error the worker really raised
    assert "no G2A order yet" in first["reason"]
    assert second["status"] == "PROCESSING"
    assert second["reason"] == ("last G2A error: ORD112: not enough funds; G2A orders: "
                                "1 paid, key not fetched, 1 refused by G2A")

    listed = orders()
    assert listed["total"] == 4
    assert listed["items"][0]["id"] == str(fresh)  # newest first
    assert all(set(i) == ORDER_KEYS for i in listed["items"])
    assert [i["id"] for i in orders("--status", "failed")["items"]] == [str(done)]
    assert orders("--stuck", "--status", "PROCESSING")["total"] == 1
    assert len(orders("--limit", "1")["items"]) == 1

    # ORDER_STUCK_AFTER_S decides: at 90 min, only the 2 h old one; at 3 h, none.
    later = cli_process("orders", "--stuck", "--json", ORDER_STUCK_AFTER_S="5400")
    assert later.code == 0 and [i["id"] for i in later.json["items"]] == [str(dead_one)]
    with resources.sessions() as s:
        assert list_orders(s, stuck=True, stuck_after_s=3 * 3600).total == 0
    human = cli("orders", "--stuck")
    assert human.code == 0 and "ORD112" in human.stdout and "2 shown of 2" in human.stdout


def test_stuck_reason_names_a_job_waiting_in_the_outbox(resources: Resources) -> None:
    # The broker refused the fulfilment at commit time: the job waits in the job outbox.
    game = make_game(resources.sessions)
    order_id, _ = place_order(resources, [(game, 1)])
    backdate(resources, order_id, 1)
    with resources.sessions() as s, s.begin():
        s.execute(text("INSERT INTO job_outbox (actor_name, args, attempts) "
                       "VALUES ('fulfil_order', jsonb_build_array(CAST(:o AS text)), 3)"),
                  {"o": str(order_id)})
    [item] = orders("--stuck")["items"]
    assert "fulfil_order waiting in the job outbox since" in item["reason"]
    assert "(3 refused sends)" in item["reason"]


def test_bad_status_is_a_usage_error() -> None:
    assert cli("orders", "--status", "LOST").code == 2
    assert cli("orders", "--limit", "5000").code == 2
