"""The FastAPI application factory used by `keysync serve` and the tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from keysync.resources import Resources
from keysync.settings import get_settings
from web.errors import install_error_handlers
from web.routes import auth, cart, games, health, metrics, orders, webhooks, wishlist


def create_app(resources: Resources | None = None) -> FastAPI:
    """An app over `resources`, or over resources built from settings at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = resources is None
        if owned:
            from worker import broker

            settings = get_settings()
            # Also when started as `uvicorn web.app:create_app` instead of `keysync serve`:
            # never sign tokens or verify webhooks without the operator's own secrets.
            settings.require_secrets()
            app.state.resources = Resources.build(
                settings, broker, pool_size=10, name="keysync-web"
            )
        yield
        if owned:
            app.state.resources.close()

    app = FastAPI(title="keysync", version="0.1.0", lifespan=lifespan)
    if resources is not None:
        app.state.resources = resources
    install_error_handlers(app)
    for module in (health, auth, cart, wishlist, games, orders, webhooks, metrics):
        app.include_router(module.router)
    return app
