"""One settings object, read once from the environment (and `.env` when present).

Every other module receives what it needs from here; nothing else reads `os.environ`
for configuration. A missing or malformed value aborts start-up with exit code 2 and a
message naming the variable (see `keysync.cli._group`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Literal, get_args

from apscheduler.triggers.cron import CronTrigger
from cryptography.fernet import Fernet
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# HS256 signs with HMAC-SHA256: RFC 7518 §3.2 (and PyJWT's InsecureKeyLengthWarning) asks
# for a key at least as long as the hash output.
JWT_SECRET_MIN_BYTES = 32

# No public defaults (CONTRACT §3): a secret in the repository lets anyone forge tokens or
# webhooks. Only `keysync up` generates them, kept in its data dir; how to make one yourself:
SECRET_HINTS = {
    "jwt_secret": "python -c 'import secrets; print(secrets.token_urlsafe(48))'",
    "key_encryption_key": "python -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'",
    "webhook_secrets": "python -c 'import base64, secrets; "
    "print(\"whsec_\" + base64.b64encode(secrets.token_bytes(32)).decode())'",
}


def _webhook_secrets(value: str) -> str:
    parts = value.split()
    for secret in parts:
        if not secret.startswith("whsec_"):
            raise ValueError("each secret must look like whsec_<base64>")
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            raise ValueError("each secret must look like whsec_<base64>") from None
        if not key:
            raise ValueError("each secret must carry a non-empty base64 key")
    return " ".join(parts)


def _jwt_secret(value: str) -> str:
    if len(value.encode()) < JWT_SECRET_MIN_BYTES:
        raise ValueError(
            f"must be at least {JWT_SECRET_MIN_BYTES} bytes (HS256); generate one with: "
            + SECRET_HINTS["jwt_secret"]
        )
    return value


def _fernet_key(value: str) -> str:
    value = value.strip()
    try:
        Fernet(value.encode())
    except (ValueError, binascii.Error):
        raise ValueError(
            "must be a Fernet key (32 url-safe base64-encoded bytes); generate one with: "
            + SECRET_HINTS["key_encryption_key"]
        ) from None
    return value


_SECRET_CHECKS = {
    "jwt_secret": _jwt_secret,
    "key_encryption_key": _fernet_key,
    "webhook_secrets": _webhook_secrets,
}


def validate_secret(name: str, value: str) -> str:
    """The normalised value of secret `name` (a key of SECRET_HINTS); ValueError when
    malformed. Empty or whitespace-only means unset and gives ""."""
    if not value.strip():
        return ""
    return _SECRET_CHECKS[name](value)


def generate_secret(name: str) -> str:
    """A fresh random value for one of SECRET_HINTS (what `keysync up` keeps in its data dir)."""
    if name == "jwt_secret":
        return secrets.token_urlsafe(48)
    if name == "key_encryption_key":
        return Fernet.generate_key().decode()
    if name == "webhook_secrets":
        return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    raise KeyError(name)


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

    # Empty means "not configured": `serve`, `worker` and `scheduler` refuse to start.
    webhook_secrets: SecretStr = SecretStr("")
    jwt_secret: SecretStr = SecretStr("")
    jwt_ttl_s: int = Field(default=3600, gt=0)
    key_encryption_key: SecretStr = SecretStr("")

    # How long a full sync that finds the sync lock taken waits before trying again.
    sync_lock_retry_ms: int = Field(default=30_000, gt=0)
    # A catalog sync that failed (or missed pages) is retried after 1, 2, 4, ... minutes
    # (at most SYNC_RETRY_MAX_MS apart) while the retry starts within SYNC_RETRY_WINDOW_S
    # of its first attempt, instead of waiting 12 hours for the next cron tick.
    sync_retry_min_ms: int = Field(default=60_000, gt=0)
    sync_retry_max_ms: int = Field(default=900_000, gt=0)
    sync_retry_window_s: int = Field(default=3600, gt=0)
    # A full listing that would deactivate more than this share of the active games
    # deactivates nothing (CONTRACT §6): an empty or truncated answer must not empty the shop.
    sync_max_removal_percent: Decimal = Field(default=Decimal("10"), ge=0, le=100)
    sync_cron: str = "0 2,14 * * *"
    stock_check_cron: str = "*/15 * * * *"

    # CONTRACT §3/§8: an order not terminal for this long is "stuck" (status, console).
    order_stuck_after_s: int = Field(default=900, gt=0)
    # CONTRACT §3: an order whose fulfilment cannot start for this long fails with a full
    # refund (`alert=order_gave_up`; the minutely poller decides, so give or take a minute).
    fulfilment_give_up_s: int = Field(default=3600, gt=0)
    # CONTRACT §3/§5: sign-in attempts a minute per email and per client address (the
    # socket peer); 0 turns a limit off (benchmarks).
    login_rate_per_min: int = Field(default=10, ge=0)
    login_rate_per_address_per_min: int = Field(default=60, ge=0)

    email_backend: Literal["log", "smtp"] = "log"
    smtp_url: SecretStr = SecretStr("")

    log_format: Literal["console", "json"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
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

    @field_validator("sync_retry_max_ms")
    @classmethod
    def _retry_max(cls, value: int, info: ValidationInfo) -> int:
        minimum = info.data.get("sync_retry_min_ms")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least SYNC_RETRY_MIN_MS ({minimum})")
        return value

    @field_validator("webhook_secrets", "jwt_secret", "key_encryption_key")
    @classmethod
    def _secret(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        assert info.field_name is not None
        return SecretStr(validate_secret(info.field_name, value.get_secret_value()))

    @field_validator("email_backend", "log_format", "log_level", mode="before")
    @classmethod
    def _one_of(cls, value: object, info: ValidationInfo) -> object:
        # Before pydantic's own Literal check, for a message in the words of the others.
        assert info.field_name is not None
        choices = get_args(cls.model_fields[info.field_name].annotation)
        if info.field_name == "log_level" and isinstance(value, str):
            value = value.upper()
        if value not in choices:
            quoted = [repr(choice) for choice in choices]
            raise ValueError(f"must be {', '.join(quoted[:-1])} or {quoted[-1]}")
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

    def require_secrets(self) -> None:
        """What `serve`, `worker` and `scheduler` check before connecting anywhere: the
        secrets with no public default (CONTRACT §3), each missing one named with a hint."""
        for name, hint in SECRET_HINTS.items():
            if not str(_plain(getattr(self, name))):
                raise SettingsError(
                    name.upper(),
                    "is required and has no default (only `keysync up` generates one); "
                    f"generate one with: {hint}",
                )


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
