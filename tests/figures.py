"""Pytest plugin (registered in tests/conftest.py): the `figures` fixture that fault, fuzz
and security scenarios fill in, and the end-of-session summary of them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.support import Figures, figures_fixture, write_summary


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    write_summary(terminalreporter)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    yield from figures_fixture(request)
