"""What the app does at start-up for its own sake: start-up objects out of the collector's way."""

from __future__ import annotations

import gc
from typing import Any

from fastapi.testclient import TestClient

from web.app import create_app


def test_startup_objects_are_frozen_for_the_apps_lifetime(resources: Any) -> None:
    gc.unfreeze()
    with TestClient(create_app(resources)) as client:
        # Full collections skip what start-up built (the console's p95 without GC spikes).
        assert gc.get_freeze_count() > 0
        assert client.get("/healthz").status_code == 200
    # Unfrozen when it stops: an app that ends (every test's) leaves nothing uncollectable.
    assert gc.get_freeze_count() == 0
