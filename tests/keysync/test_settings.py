"""Settings: parsed once from the environment; a bad value exits 2 naming the variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pydantic import SecretStr

from keysync.settings import (
    SECRET_HINTS,
    Settings,
    SettingsError,
    generate_secret,
    get_settings,
)


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
        ("WEBHOOK_SECRETS", "whsec_"),
        ("KEY_ENCRYPTION_KEY", "short"),
        ("JWT_SECRET", "only-twenty-six-bytes-long"),
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
    parsed = Settings(jwt_secret="super-secret-value-of-at-least-32-bytes",
                      g2a_api_secret="g2a-secret-value")
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


# --- secrets without a public default (CONTRACT §3) ----------------------------------------

SECRET_VARIABLES = ("JWT_SECRET", "KEY_ENCRYPTION_KEY", "WEBHOOK_SECRETS")


def _without(variable: str, value: str | None, dead_port: str) -> dict[str, str]:
    """The suite's environment minus one secret (unset, or set to `value`), with every URL
    pointing where nothing listens: a command that tried to connect would exit 5, not 2."""
    env = {k: v for k, v in os.environ.items() if k != variable}
    if value is not None:
        env[variable] = value
    dead = f"127.0.0.1:{dead_port}"
    env.update(DATABASE_URL=f"postgresql://u@{dead}/x", REDIS_URL=f"redis://{dead}/0",
               BROKER_URL=f"redis://{dead}/0")
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # cwd "/": no .env of the checkout can supply the secret.
    return subprocess.run([sys.executable, "-m", "keysync", *args], capture_output=True,
                          text=True, env=env, timeout=60, cwd="/")


@pytest.mark.parametrize("variable", SECRET_VARIABLES)
@pytest.mark.parametrize("command", [["serve"], ["worker"], ["scheduler"]])
def test_long_running_processes_refuse_to_start_without_a_secret(
    command: list[str], variable: str, dead_redis_url: str
) -> None:
    port = dead_redis_url.rsplit(":", 1)[1].split("/")[0]
    result = _run(command, _without(variable, None, port))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"{variable} is required" in result.stderr
    assert "Traceback" not in result.stderr
    # The secrets that are configured are never echoed.
    for other in SECRET_VARIABLES:
        for value in os.environ[other].split():
            assert value not in result.stderr + result.stdout


@pytest.mark.parametrize(("variable", "value"),
                         [("JWT_SECRET", ""), ("KEY_ENCRYPTION_KEY", "   "),
                          ("WEBHOOK_SECRETS", " \t ")])
def test_an_empty_secret_counts_as_missing(variable: str, value: str,
                                           dead_redis_url: str) -> None:
    port = dead_redis_url.rsplit(":", 1)[1].split("/")[0]
    result = _run(["serve"], _without(variable, value, port))
    assert result.returncode == 2, result.stderr
    assert f"{variable} is required" in result.stderr


def test_commands_that_need_no_secret_run_without_them() -> None:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
    upgrade = _run(["db", "upgrade"], env)
    assert upgrade.returncode == 0, upgrade.stderr
    check = _run(["check", "--json"], env)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["ok"] is True
    created = _run(["user", "create", "nosecrets@example.com", "--password", "long-enough",
                    "--json"], env)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["email"] == "nosecrets@example.com"


def test_secret_values_are_validated_and_normalised() -> None:
    assert Settings(jwt_secret="  ", webhook_secrets=" \t ",
                    key_encryption_key="").model_dump(include=set(SECRET_HINTS)) == {
        "jwt_secret": SecretStr(""), "webhook_secrets": SecretStr(""),
        "key_encryption_key": SecretStr("")}
    generated = {name: generate_secret(name) for name in SECRET_HINTS}
    parsed = Settings(**generated)
    parsed.require_secrets()  # generated values pass every check
    assert len(parsed.jwt_secret.get_secret_value().encode()) >= 32
    assert parsed.webhook_secret_list and len(parsed.webhook_secret_list[0]) == 32
    # Each call is fresh randomness: no value repeats.
    assert generated != {name: generate_secret(name) for name in SECRET_HINTS}
    with pytest.raises(SettingsError) as info:
        Settings(jwt_secret="", key_encryption_key=generated["key_encryption_key"],
                 webhook_secrets=generated["webhook_secrets"]).require_secrets()
    assert info.value.variable == "JWT_SECRET"
