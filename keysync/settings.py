"""One settings object, read once from the environment (and `.env` when present).

Every other module receives what it needs from here; nothing else reads `os.environ`
for configuration. A missing or malformed value aborts start-up with exit code 2 and a
message naming the variable (see `keysync.cli`).
"""

from __future__ import annotations

import base64
import functools
from decimal import Decimal
from pathlib import Path

from apscheduler.triggers.cron import CronTrigger
from cryptography.fernet import Fernet
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "dev-only-jwt-secret-change-me-0123456789"
DEV_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"keysync-dev-webhook-secret-32by").decode()
# A fixed, valid Fernet key so `make run` works out of the box; production must set its own.
DEV_KEY_ENCRYPTION_KEY = base64.urlsafe_b64encode(b"keysync-dev-key-encryption-32b!!").decode()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    database_url: str = Field(default="", description="postgresql:// or postgresql+psycopg://")
    redis_url: str = Field(default="", description="cache and locks")
    broker_url: str = Field(default="", description="dramatiq broker; defaults to REDIS_URL")

    g2a_api_url: str = ""
    g2a_email: str = ""
    g2a_api_hash: SecretStr = SecretStr("")
    g2a_api_secret: SecretStr = SecretStr("")
    g2a_rate_limit_per_min: int = Field(default=600, gt=0)
    price_markup_percent: Decimal = Field(default=Decimal("2"), ge=0, le=1000)

    webhook_secrets: SecretStr = SecretStr("")
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    jwt_ttl_s: int = Field(default=3600, gt=0)
    key_encryption_key: SecretStr = SecretStr(DEV_KEY_ENCRYPTION_KEY)

    # How long a full sync that finds the sync lock taken waits before trying again.
    sync_lock_retry_ms: int = Field(default=30_000, gt=0)
    sync_cron: str = "0 2,14 * * *"
    stock_check_cron: str = "*/15 * * * *"

    email_backend: str = "log"
    smtp_url: SecretStr = SecretStr("")

    log_format: str = "console"
    log_level: str = "INFO"
    keysync_data_dir: Path = Path(".keysync")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not value:
            return value
        for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        raise ValueError("must start with postgresql:// or postgresql+psycopg://")

    @field_validator("redis_url", "broker_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("sync_cron", "stock_check_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        CronTrigger.from_crontab(value, timezone="UTC")
        return value

    @field_validator("webhook_secrets")
    @classmethod
    def _webhook_secrets(cls, value: SecretStr) -> SecretStr:
        for secret in value.get_secret_value().split():
            if not secret.startswith("whsec_"):
                raise ValueError("each secret must look like whsec_<base64>")
            base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        return value

    @field_validator("key_encryption_key")
    @classmethod
    def _fernet_key(cls, value: SecretStr) -> SecretStr:
        Fernet(value.get_secret_value().encode())
        return value

    @field_validator("email_backend")
    @classmethod
    def _email_backend(cls, value: str) -> str:
        if value not in ("log", "smtp"):
            raise ValueError("must be 'log' or 'smtp'")
        return value

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value not in ("console", "json"):
            raise ValueError("must be 'console' or 'json'")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        value = value.upper()
        if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if not self.broker_url:
            self.broker_url = self.redis_url
        if self.email_backend == "smtp" and not self.smtp_url.get_secret_value():
            raise ValueError("SMTP_URL is required when EMAIL_BACKEND=smtp")
        return self

    @property
    def webhook_secret_list(self) -> list[bytes]:
        """Decoded secrets, newest first as configured; all are accepted (rotation)."""
        return [
            base64.b64decode(s.removeprefix("whsec_"))
            for s in self.webhook_secrets.get_secret_value().split()
        ]

    def require(self, *names: str) -> None:
        """Fail like a malformed value when a command needs a setting that is empty."""
        missing = [n for n in names if not str(_plain(getattr(self, n)))]
        if missing:
            raise SettingsError(missing[0].upper(), "is required for this command")


class SettingsError(Exception):
    """A configuration problem; the CLI turns it into exit code 2."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


def _plain(value: object) -> object:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, parsed once. Raises SettingsError naming the variable."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        variable = str(error["loc"][0]).upper() if error["loc"] else "configuration"
        raise SettingsError(variable, error["msg"].removeprefix("Value error, ")) from None
