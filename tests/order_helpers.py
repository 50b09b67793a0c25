"""Shared set-up for the order, fulfilment and webhook tests: real rows, real simulator.

(Orders placed, fulfilled and checked through the real services: `tests/order_flows.py`.)

Nothing here fakes our code: users and games are inserted as the catalog sync and
registration would leave them, and the G2A side is `g2a_sim` over real HTTP.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
from cryptography.fernet import Fernet
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import (
    G2APurchase,
    G2APurchaseStatus,
    Game,
    OrderItem,
    Transaction,
    TransactionStatus,
    TransactionType,
    User,
)
from g2a_sim import DEFAULT_API_HASH, DEFAULT_API_SECRET, DEFAULT_EMAIL, sign_webhook
from g2a_sim.server import SimServer
from services.g2a import G2AClient

TEST_SECRETS = (
    "whsec_dGVzdC1zZWNyZXQtb25lLXRlc3Qtc2VjcmV0LW9uZQ==",
    "whsec_dGVzdC1zZWNyZXQtdHdvLXRlc3Qtc2VjcmV0LXR3bw==",
)


def make_user(sessions: sessionmaker[Session], balance: str | Decimal = "100.00") -> uuid.UUID:
    user_id = uuid.uuid4()
    with sessions() as s, s.begin():
        s.execute(
            insert(User).values(
                id=user_id, email=f"{user_id.hex[:12]}@example.com", password_hash="x",
                name="Test", balance=Decimal(balance),
            )
        )
        if Decimal(balance) > 0:  # as `keysync user top-up` would: the ledger explains it
            s.execute(insert(Transaction).values(
                user_id=user_id, type=TransactionType.TOP_UP, amount=Decimal(balance),
                status=TransactionStatus.COMPLETED,
            ))
    return user_id


def make_game(
    sessions: sessionmaker[Session],
    *,
    price: str | Decimal = "10.00",
    product_id: str | None = None,
    in_stock: bool = True,
    is_active: bool = True,
    name: str | None = None,
    g2a_qty: int | None = None,
) -> uuid.UUID:
    """A game row as the sync leaves it; `g2a_qty` defaults to 10 in stock, 0 otherwise
    (what the last sync saw, which G2A may no longer have)."""
    game_id = uuid.uuid4()
    pid = product_id or str(uuid.uuid4().int % 10**12)
    with sessions() as s, s.begin():
        s.execute(
            insert(Game).values(
                id=game_id, g2a_product_id=pid, slug=f"game-{game_id.hex}",
                name=name or f"Game {game_id.hex[:6]}", price=Decimal(price),
                g2a_price=Decimal(price),
                g2a_qty=g2a_qty if g2a_qty is not None else (10 if in_stock else 0),
                in_stock=in_stock, is_active=is_active,
            )
        )
    return game_id


def balance(sessions: sessionmaker[Session], user_id: uuid.UUID) -> Decimal:
    with sessions() as s:
        user = s.get(User, user_id)
        assert user is not None
        return user.balance


def sim_client(sim: SimServer, *, timeout_s: float = 10.0) -> G2AClient:
    return G2AClient(
        httpx.Client(base_url=sim.url, timeout=timeout_s),
        email=DEFAULT_EMAIL, api_hash=DEFAULT_API_HASH, api_secret=DEFAULT_API_SECRET,
        max_attempts=3, base_wait_s=0.01, max_wait_s=0.05,
    )


def sim_product(sim: SimServer, *, in_stock: bool = True, skip: int = 0) -> tuple[str, Decimal]:
    """A simulator product id and what G2A charges for it."""
    found = 0
    for pid in sim.state.ids:
        p = sim.state.products[pid]
        if (p.qty > 5) == in_stock and (in_stock or p.qty == 0):
            if found == skip:
                cents = p.retail_min_price if p.retail_min_price is not None else p.min_price
                return str(pid), Decimal(cents) / 100
            found += 1
    raise AssertionError("no such product in the simulator")


def sim_game(
    sessions: sessionmaker[Session], sim: SimServer, *, skip: int = 0, in_stock: bool = True,
    markup: str = "1.02",
) -> uuid.UUID:
    """Our game for a simulator product, priced as the sync would (G2A price + 2 %)."""
    pid, cost = sim_product(sim, in_stock=in_stock, skip=skip)
    price = (cost * Decimal(markup)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return make_game(sessions, price=price, product_id=pid)


def sim_stats(sim: SimServer) -> dict[str, Any]:
    return dict(httpx.get(sim.url + "/_sim/stats").json())


def signed_headers(
    body: bytes, *, msg_id: str | None = None, ts: int | None = None,
    secret: str = TEST_SECRETS[1],
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    ts = int(time.time()) if ts is None else ts
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign_webhook(secret, msg_id, ts, body),
        "content-type": "application/json",
    }


def status_body(status: str, *, order_id: uuid.UUID | None = None,
                external_order_id: str | None = None) -> bytes:
    data: dict[str, Any] = {"status": status, "occurred_at": "2026-01-01T00:00:00+00:00"}
    if order_id is not None:
        data["order_id"] = str(order_id)
    if external_order_id is not None:
        data["external_order_id"] = external_order_id
    return json.dumps({"type": "order.status_changed", "data": data}).encode()


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


@contextmanager
def sim_server(**overrides: Any) -> Iterator[SimServer]:
    with SimServer(products=200, rate_limit_per_min=0, **overrides) as sim:
        yield sim


def deliver_all(resources: Any, order_id: uuid.UUID) -> None:
    """Store a DELIVERED key for every unit, as a finished fulfilment leaves them."""
    fernet = Fernet(resources.settings.key_encryption_key.get_secret_value().encode())
    with resources.sessions() as s, s.begin():
        for item in s.scalars(select(OrderItem).where(OrderItem.order_id == order_id)):
            for unit in range(item.quantity):
                s.add(G2APurchase(
                    order_item_id=item.id, unit_index=unit, g2a_order_id=uuid.uuid4().hex,
                    transaction_id=f"tx-{uuid.uuid4().hex[:12]}",
                    status=G2APurchaseStatus.DELIVERED, key_encrypted=fernet.encrypt(b"K-1"),
                ))

