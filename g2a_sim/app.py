"""The simulator as one ASGI app: the Export API under `/v1` (`export_api`), test controls
under `/_sim` (`controls`), and, when a webhook URL is configured, the webhook sender."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

from starlette.applications import Starlette

from g2a_sim.controls import control_routes
from g2a_sim.export_api import export_routes
from g2a_sim.state import SimState
from g2a_sim.webhooks import DEFAULT_WEBHOOK_SECRET, WebhookSender

DEFAULT_EMAIL = "sim@keysync.local"
DEFAULT_API_HASH = "sim-api-hash"
DEFAULT_API_SECRET = "sim-api-secret"


@dataclass(frozen=True, slots=True)
class SimConfig:
    products: int = 1000
    seed: int = 42
    rate_limit_per_min: int = 600  # 0 = unlimited
    webhook_url: str | None = None
    webhook_secret: str | None = None  # whsec_<base64>; DEFAULT_WEBHOOK_SECRET when None
    email: str = DEFAULT_EMAIL
    api_hash: str = DEFAULT_API_HASH
    api_secret: str = DEFAULT_API_SECRET
    key_delay_s: float = 0.0
    funds: Decimal = Decimal("1000000000")


def expected_authorization(config: SimConfig) -> str:
    digest = hashlib.sha256(f"{config.api_hash}{config.email}{config.api_secret}".encode())
    return f"{config.api_hash}, {digest.hexdigest()}"


def create_app(config: SimConfig | None = None) -> Starlette:
    config = config or SimConfig()
    sender: WebhookSender | None = None
    state = SimState(
        products=config.products,
        seed=config.seed,
        rate_limit_per_min=config.rate_limit_per_min,
        key_delay_s=config.key_delay_s,
        funds=config.funds,
    )
    if config.webhook_url:
        sender = WebhookSender(
            state, config.webhook_url, config.webhook_secret or DEFAULT_WEBHOOK_SECRET
        )
        state.on_complete = sender.order_completed

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if sender is not None:
            sender.start()
        try:
            yield
        finally:
            if sender is not None:
                sender.stop()

    app = Starlette(
        routes=[
            *export_routes(state, expected_authorization(config)),
            *control_routes(state, config.seed, sender),
        ],
        lifespan=lifespan,
    )
    app.state.sim = state
    app.state.config = config
    app.state.webhooks = sender
    return app
