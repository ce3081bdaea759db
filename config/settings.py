"""The hub's one settings class: built once at start-up from the environment and passed down.

Variables carry the `HUB_` prefix, except the conventional `DATABASE_URL`, `REDIS_URL` and
`RAY_ADDRESS`. Unset `DATABASE_URL` / `REDIS_URL` mean "start the embedded servers".
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET_KEY = "dev-only-insecure-secret-key-change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUB_", extra="ignore", frozen=True)

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".hub")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    #: The URL providers use to reach this hub. Twilio signs the exact URL it posts to, so
    #: signatures are checked against this base, not against what the proxy hands us.
    public_url: str | None = None

    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "HUB_DATABASE_URL")
    )
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "HUB_REDIS_URL"))
    ray_address: str | None = Field(
        None, validation_alias=AliasChoices("RAY_ADDRESS", "HUB_RAY_ADDRESS")
    )
    db_pool_min: int = 2
    db_pool_max: int = 20

    #: Encrypts provider credentials at rest. Rotate by moving the old key to `old_secret_keys`.
    secret_key: SecretStr = SecretStr(DEV_SECRET_KEY)
    old_secret_keys: list[SecretStr] = Field(default_factory=list)

    carrier_port: int = Field(8025, ge=0, le=65535)

    #: Start (or join, with RAY_ADDRESS) the Ray actors with the gateway.
    actors: bool = True
    sender_shards: int = Field(2, ge=1, le=256)
    scheduler_shards: int = Field(1, ge=1, le=256)
    #: How long a shard's claim on a message or recipient lasts without renewal; a dead
    #: shard's work is taken over after this.
    lease_s: float = Field(30.0, ge=2.0, le=600.0)
    #: How long a send whose outcome is unknown waits before the provider's silence (no such
    #: message in its log) is believed and the message is queued again.
    in_doubt_grace_s: float = Field(120.0, ge=1.0, le=86_400.0)
    #: How long a text accepted by Twilio waits for its final receipt before the hub asks
    #: Twilio for its status (a status callback that found no gateway listening is not
    #: retried), and for how long after sending it keeps asking.
    receipt_grace_s: float = Field(180.0, ge=0.0, le=86_400.0)
    receipt_max_age_s: float = Field(172_800.0, ge=60.0, le=30 * 86_400.0)

    #: The realtime feed: how often it pings, how many frames wait for one client before it
    #: is closed as a slow consumer (4009, it resumes with `since`), how long a ticket lives,
    #: and how many days the event log keeps (a `since` older than that gets
    #: resync_required).
    feed_heartbeat_s: float = Field(25.0, ge=1.0, le=300.0)
    feed_buffer: int = Field(1000, ge=16, le=100_000)
    feed_ticket_ttl_s: float = Field(30.0, ge=1.0, le=600.0)
    event_retention_days: int = Field(30, ge=1, le=3650)

    max_body_bytes: int = 1_000_000
    max_import_bytes: int = 64_000_000
    idempotency_ttl_hours: int = 24
    page_limit_default: int = 50
    page_limit_max: int = 500
    #: How long a login session lasts; the cookie is Secure when `public_url` is https.
    session_ttl_hours: float = Field(12.0, gt=0, le=24 * 30)
    log_level: str = "INFO"
    log_json: bool = False

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.environment != "development":
            if self.secret_key.get_secret_value() == DEV_SECRET_KEY:
                raise ValueError(
                    "HUB_SECRET_KEY is the development default; set a random secret "
                    "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`) "
                    f"before running with HUB_ENVIRONMENT={self.environment}"
                )
            if len(self.secret_key.get_secret_value()) < 16:
                raise ValueError("HUB_SECRET_KEY must be at least 16 characters")
        return self

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
