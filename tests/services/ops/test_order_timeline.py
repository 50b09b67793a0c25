"""`services.ops.order_timeline`: an order's story for support, over real Postgres, with
its G2A purchases, money and webhook events in time order, and never a key."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import insert, select, update

from db.models import G2APurchase, G2APurchaseStatus, OrderItem, OrderStatus, WebhookEvent
from keysync.resources import Resources
from services.ops import order_timeline
from services.orders.errors import OrderNotFound
from services.webhooks import intake
from tests.order_flows import place_order
from tests.order_helpers import make_game, status_body

KEY = "ZZTOP-SECRET-KEY-0001"


def store(resources: Resources, body: bytes) -> str:
    event_id = f"msg_{uuid.uuid4().hex}"
    intake.store(resources.sessions, resources.broker, event_id, intake.parse(body))
    return event_id


def test_a_partially_delivered_order_in_time_order(resources: Resources) -> None:
    game = make_game(resources.sessions, price="6.00")
    order_id, _ = place_order(resources, [(game, 2)], status=OrderStatus.PROCESSING)
    fernet = Fernet(resources.settings.key_encryption_key.get_secret_value().encode())
    later = datetime.now(UTC) + timedelta(seconds=5)
    with resources.sessions() as s, s.begin():
        item_id = s.scalars(select(OrderItem.id).where(OrderItem.order_id == order_id)).one()
        s.execute(insert(G2APurchase), [
            {"order_item_id": item_id, "unit_index": 0, "g2a_order_id": "g2a-ok",
             "status": G2APurchaseStatus.DELIVERED, "price": Decimal("5.80"),
             "key_encrypted": fernet.encrypt(KEY.encode()), "created_at": later},
            {"order_item_id": item_id, "unit_index": 1, "status": G2APurchaseStatus.FAILED,
             "last_error": "ORD112: not enough funds",
             "created_at": later + timedelta(seconds=1)},
        ])
    by_order = store(resources, status_body("PROCESSING", order_id=order_id))
    by_g2a = store(resources, status_body("COMPLETED", external_order_id="g2a-ok"))
    store(resources, status_body("COMPLETED", external_order_id="someone-elses"))
    with resources.sessions() as s, s.begin():
        s.execute(update(WebhookEvent).where(WebhookEvent.event_id == by_g2a)
                  .values(received_at=later + timedelta(seconds=2)))

    with resources.sessions() as s:
        view = order_timeline.timeline(s, order_id)
    assert view.order.status is OrderStatus.PROCESSING and view.order.total == Decimal("12.00")
    assert view.order.user_email.endswith("@example.com")
    assert view.order.refunded == Decimal("0.00")
    [item] = view.items
    assert (item.quantity, item.keys_stored, item.unit_price) == (2, 1, Decimal("6.00"))
    kinds = [(e.kind, getattr(e, "type", None) or getattr(e, "status", None))
             for e in view.entries]
    assert kinds[0] == ("transaction", "PURCHASE")
    assert [e.kind for e in view.entries][-3:] == ["g2a_purchase", "g2a_purchase",
                                                   "webhook_event"]
    webhook_ids = [e.event_id for e in view.entries if e.kind == "webhook_event"]
    assert sorted(webhook_ids) == sorted([by_order, by_g2a])
    failed = [e for e in view.entries if e.kind == "g2a_purchase" and e.status.value == "FAILED"]
    assert failed[0].last_error == "ORD112: not enough funds"
    assert view.reason is not None and "last G2A error: ORD112" in view.reason
    text = json.dumps(view.dump())
    assert KEY not in text and "key" not in {k for e in view.dump()["entries"] for k in e}


def test_refund_and_unknown_order(resources: Resources, session: Any) -> None:
    game = make_game(resources.sessions, price="3.00")
    order_id, _ = place_order(resources, [(game, 1)], status=OrderStatus.FAILED)
    view = order_timeline.timeline(session, order_id)
    assert view.order.refunded == Decimal("3.00") and view.reason is None
    assert [e.type.value for e in view.entries if e.kind == "transaction"] == [
        "PURCHASE", "REFUND"]
    with pytest.raises(OrderNotFound):
        order_timeline.timeline(session, uuid.uuid4())
