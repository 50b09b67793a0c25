"""A local G2A Export API simulator (`keysync g2a-sim`); product code never imports it."""

from g2a_sim.app import DEFAULT_API_HASH, DEFAULT_API_SECRET, DEFAULT_EMAIL, SimConfig, create_app
from g2a_sim.server import SimServer, run
from g2a_sim.webhooks import DEFAULT_WEBHOOK_SECRET, sign_webhook

__all__ = [
    "DEFAULT_API_HASH",
    "DEFAULT_API_SECRET",
    "DEFAULT_EMAIL",
    "DEFAULT_WEBHOOK_SECRET",
    "SimConfig",
    "SimServer",
    "create_app",
    "run",
    "sign_webhook",
]
