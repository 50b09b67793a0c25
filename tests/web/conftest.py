"""The app over the test's resources, in-process (`client`), for every API and console test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from web.app import create_app


@pytest.fixture
def client(resources: Any) -> Iterator[TestClient]:
    with TestClient(create_app(resources)) as c:
        yield c
