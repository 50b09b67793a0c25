"""Settings: parsed once from the environment; a bad value exits 2 naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from keysync.settings import Settings, SettingsError, get_settings


def _keysync(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keysync", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "mysql://nope"),
        ("REDIS_URL", "http://nope"),
        ("G2A_RATE_LIMIT_PER_MIN", "fast"),
        ("PRICE_MARKUP_PERCENT", "-1"),
        ("SYNC_CRON", "every day"),
        ("WEBHOOK_SECRETS", "not-a-whsec"),
        ("KEY_ENCRYPTION_KEY", "short"),
        ("LOG_FORMAT", "xml"),
    ],
)
def test_bad_value_exits_2_naming_the_variable(variable: str, value: str) -> None:
    result = _keysync("db", "upgrade", **{variable: value})
    assert result.returncode == 2, result.stderr
    assert variable in result.stderr
    assert value not in result.stderr or variable in ("LOG_FORMAT",)  # secrets are not echoed
    assert "Traceback" not in result.stderr


def test_missing_required_setting_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "keysync", "db", "upgrade"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr


def test_unreachable_database_exits_5(dead_redis_url: str) -> None:
    port = dead_redis_url.rsplit(":", 1)[1].split("/")[0]
    result = _keysync("db", "upgrade", DATABASE_URL=f"postgresql://u@127.0.0.1:{port}/x")
    assert result.returncode == 5
    assert "PostgreSQL unreachable" in result.stderr


def test_urls_and_defaults_are_normalised() -> None:
    parsed = Settings(database_url="postgresql://u@h/db", redis_url="redis://h:1/0", broker_url="")
    assert parsed.database_url == "postgresql+psycopg://u@h/db"
    assert parsed.broker_url == "redis://h:1/0"
    assert str(parsed.price_markup_percent) == "2"
    assert parsed.sync_cron == "0 2,14 * * *" and parsed.stock_check_cron == "*/15 * * * *"


def test_secrets_are_not_in_repr() -> None:
    parsed = Settings(jwt_secret="super-secret-value", g2a_api_secret="g2a-secret-value")
    assert "super-secret-value" not in repr(parsed)
    assert "g2a-secret-value" not in repr(parsed)


def test_get_settings_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("G2A_RATE_LIMIT_PER_MIN", "0")
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError) as info:
            get_settings()
        assert info.value.variable == "G2A_RATE_LIMIT_PER_MIN"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
