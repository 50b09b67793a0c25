"""Pytest plugin (registered in tests/conftest.py): the `figures` fixture that fault, fuzz
and security scenarios fill in, and the end-of-session summary of them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.support import RESULTS, Figures, figures_fixture, write_summary

_WORKER_KEY = "keysync_figures"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under xdist each worker hands its scenarios to the controller, which prints them."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[_WORKER_KEY] = json.dumps([vars(f) for f in RESULTS], default=str)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    data = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
    if data:
        RESULTS.extend(Figures(**fields) for fields in json.loads(data))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    write_summary(terminalreporter)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    yield from figures_fixture(request)
