"""Browser tests of the operations console: Playwright (sync API) driving Debian's headless
Chromium against the app served by uvicorn on a real port, over real Postgres and Redis,
with a real in-process dramatiq worker and the G2A simulator.

Without /usr/bin/chromium they skip with the command that installs it, except in CI
(`CI` set), where a missing browser is a failure: the console must be tested there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from db.models import User
from g2a_sim.server import SimServer
from keysync.resources import Resources
from services.accounts.auth import create_user
from tests.helpers import LiveServer
from tests.order_helpers import sim_server
from web.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "browser-pass-123"
ADMIN = "ops@example.com"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        message = (f"{CHROMIUM} is missing: install Debian's Chromium with "
                   "`apt-get install chromium` (or `make browser` as root)")
        if os.environ.get("CI"):
            pytest.fail(message + " -- CI must run the browser tests", pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield launched
        launched.close()


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with sim_server() as server:
        yield server


@pytest.fixture
def live(resources: Resources) -> Iterator[LiveServer]:
    with LiveServer(create_app(resources)) as server:
        yield server


@pytest.fixture
def page(browser: Any, live: LiveServer) -> Iterator[Any]:
    context = browser.new_context(base_url=live.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def make_user(resources: Resources, email: str = ADMIN, *, admin: bool = True) -> None:
    user = create_user(resources.sessions, email=email, password=PASSWORD)
    with resources.sessions() as s, s.begin():
        s.execute(update(User).where(User.id == user.id).values(is_admin=admin))


def sign_in(page: Any, email: str = ADMIN, next_: str = "/admin") -> Any:
    """Fill and send the sign-in form as a person would; the answer of the last load."""
    page.goto(f"/admin/login?next={next_}")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation() as navigation:
        page.click("button[type=submit]")
    return navigation.value


def text_of(page: Any, selector: str) -> str:
    return re.sub(r"\s+", " ", str(page.inner_text(selector))).strip()
