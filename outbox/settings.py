"""One typed settings object; nothing else in the project reads ``os.environ``.

The environment variable names of the original OpsConductor document are kept
(``REDIS_STREAMS_URL``, ``REDIS_PASSWORD``, ``PROCESSOR_WORKERS``, ``MAX_RETRIES``,
``DEAD_LETTER_TTL``, ``MONITOR_PORT``, ``REFRESH_INTERVAL``). No password has a default.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class Settings(BaseSettings):
    """Configuration of every component, read from the environment (and an optional ``.env``)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    database_url: SecretStr = Field(
        default=SecretStr("postgresql://postgres@127.0.0.1:5432/opsconductor"),
        validation_alias=_env("DATABASE_URL"),
        description="PostgreSQL URL (libpq form); the driver suffix is added where needed.",
    )
    redis_streams_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        validation_alias=_env("REDIS_STREAMS_URL"),
        description="Redis URL; rediss:// for TLS, redis://user@host for an ACL user.",
    )
    redis_password: SecretStr | None = Field(
        default=None,
        validation_alias=_env("REDIS_PASSWORD"),
        description="Redis password (AUTH); unset means no password.",
    )
    stream_prefix: str = Field(
        default="opsconductor",
        validation_alias=_env("STREAM_PREFIX"),
        description="First segment of every Redis key: <prefix>:<service>:events.",
    )
    max_payload_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        validation_alias=_env("OUTBOX_MAX_PAYLOAD_BYTES"),
        description="Largest serialised event data emit() accepts.",
    )
    processor_workers: int = Field(
        default=4, ge=1, le=256, validation_alias=_env("PROCESSOR_WORKERS")
    )
    max_retries: int = Field(default=3, ge=0, le=1000, validation_alias=_env("MAX_RETRIES"))
    dead_letter_ttl_s: int = Field(default=86400, ge=60, validation_alias=_env("DEAD_LETTER_TTL"))
    monitor_host: str = Field(default="127.0.0.1", validation_alias=_env("MONITOR_HOST"))
    monitor_port: int = Field(default=8090, ge=1, le=65535, validation_alias=_env("MONITOR_PORT"))
    refresh_interval_s: float = Field(
        default=5.0, gt=0, le=3600, validation_alias=_env("REFRESH_INTERVAL")
    )

    # --- relay settings (relay/) ---

    # --- projection settings (projections/) ---

    # --- monitor settings (monitor/) ---

    @field_validator("stream_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "STREAM_PREFIX must match ^[a-z][a-z0-9_-]{0,62}$ (it becomes part of Redis keys)"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if not url.startswith(("postgresql://", "postgres://", "postgresql+")):
            raise ValueError("DATABASE_URL must be a postgresql:// URL")
        return value

    def libpq_url(self) -> str:
        """DATABASE_URL without a SQLAlchemy driver suffix (for asyncpg.connect)."""
        url = self.database_url.get_secret_value()
        scheme, rest = url.split("://", 1)
        return "postgresql://" + rest if scheme.startswith("postgres") else url

    def sqlalchemy_url(self, *, driver: str = "asyncpg") -> str:
        """DATABASE_URL for SQLAlchemy with the given driver (``asyncpg`` or ``psycopg``)."""
        return f"postgresql+{driver}://" + self.libpq_url().split("://", 1)[1]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
