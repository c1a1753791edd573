"""Settings: what a service's ``emit()`` reads, what the streams client reads, and what the
commands read.

A library is a guest in someone else's service, so each part reads only its own variables, from
the environment only; nothing here reads a ``.env`` file unless a command asks for it
(:func:`use_env_file`, called by ``outbox`` at start):

- :class:`EmitSettings` (``emit()``): ``OUTBOX_SCHEMA``, ``OUTBOX_MAX_PAYLOAD_BYTES``,
  ``STREAM_PREFIX``; or set them in code with :func:`configure`.
- :class:`ClientSettings` (``RedisStreamsClient``): the Redis connection, the prefix and the
  retry and dead-letter settings.
- :class:`Settings` (the ``outbox`` commands: relay, projections, monitor, migrate): all of them.

The environment variable names of the original OpsConductor document are kept
(``REDIS_STREAMS_URL``, ``REDIS_PASSWORD``, ``PROCESSOR_WORKERS``, ``MAX_RETRIES``,
``DEAD_LETTER_TTL``, ``MONITOR_PORT``, ``REFRESH_INTERVAL``). No password has a default.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from outbox.errors import ConfigurationError
from outbox.keyring import keys_from
from outbox.naming import SCHEMA_PATTERN
from outbox.validation import check_tenant_id

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class _FromEnvironment(BaseSettings):
    # No env_file: a library never reads a .env implicitly (see use_env_file for commands).
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)


class _Names(_FromEnvironment):
    stream_prefix: str = Field(
        default="opsconductor",
        validation_alias=_env("STREAM_PREFIX"),
        description="First segment of every Redis key: <prefix>:<service>:events.",
    )
    outbox_schema: str = Field(
        default="public",
        validation_alias=_env("OUTBOX_SCHEMA"),
        description="PostgreSQL schema of every outbox table (outbox_events, relay_*, "
        "projection_*); statements name it explicitly, whatever the search_path.",
    )

    @field_validator("stream_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "STREAM_PREFIX must match ^[a-z][a-z0-9_-]{0,62}$ (it becomes part of Redis keys)"
            )
        return value

    @field_validator("outbox_schema")
    @classmethod
    def _check_schema(cls, value: str) -> str:
        if not SCHEMA_PATTERN.match(value):
            raise ValueError(
                f"OUTBOX_SCHEMA must match {SCHEMA_PATTERN.pattern} (a plain PostgreSQL name)"
            )
        return value


class _EncryptionKeys(_FromEnvironment):
    """Master keys of encrypted event fields (outbox/encryption.py, docs/encryption.md): what
    emit() seals with and what consumers open with."""

    encryption_keys: SecretStr | None = Field(
        default=None,
        validation_alias=_env("OUTBOX_ENCRYPTION_KEYS"),
        description="Master keys as id:base64 pairs (32-byte AES-256 keys), comma-separated; "
        "the first seals new values unless OUTBOX_ENCRYPTION_ACTIVE_KEY names another, all of "
        "them open.",
    )
    encryption_key_file: str | None = Field(
        default=None,
        validation_alias=_env("OUTBOX_ENCRYPTION_KEY_FILE"),
        description="Instead of OUTBOX_ENCRYPTION_KEYS: a file of id:base64 lines, or a "
        "directory of <id>.key files (and subject keys in subjects/).",
    )
    encryption_active_key: str | None = Field(
        default=None,
        validation_alias=_env("OUTBOX_ENCRYPTION_ACTIVE_KEY"),
        description="Id of the key new values are sealed with (default: the first listed).",
    )


class EmitSettings(_Names, _EncryptionKeys):
    """What ``emit()`` reads: the outbox's schema, the payload limit and the stream prefix."""

    max_payload_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        validation_alias=_env("OUTBOX_MAX_PAYLOAD_BYTES"),
        description="Largest serialised event data emit() accepts.",
    )


class ClientSettings(_Names, _EncryptionKeys):
    """What the streams client (``RedisStreamsClient``) reads."""

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
    redis_cluster: Literal["auto", "true", "false"] = Field(
        default="auto",
        validation_alias=_env("REDIS_CLUSTER"),
        description="true: REDIS_STREAMS_URL names a node of a Redis Cluster (any node; the "
        "others are discovered). auto: a single Redis, and a cluster found there is refused "
        "with what to set. false: a single Redis, unchecked.",
    )
    redis_sentinels: str | None = Field(
        default=None,
        validation_alias=_env("REDIS_SENTINELS"),
        description="host:port,host:port of Redis Sentinels: the primary of "
        "REDIS_SENTINEL_MASTER is asked of them and followed through failovers; "
        "REDIS_STREAMS_URL then gives only the user, password, TLS and database number. "
        "Or write REDIS_STREAMS_URL as redis+sentinel://[user:password@]h1:26379,h2:26379/"
        "<master>[/<db>].",
    )
    redis_sentinel_master: str = Field(
        default="mymaster",
        validation_alias=_env("REDIS_SENTINEL_MASTER"),
        description="The Sentinel service name of the primary (REDIS_SENTINELS).",
    )
    stream_key_layout: Literal["document", "tagged"] | None = Field(
        default=None,
        validation_alias=_env("STREAM_KEY_LAYOUT"),
        description="document: <prefix>:<service>:events (the original document's names); "
        "tagged: <prefix>:{<service>}:events, every key of a service in one cluster slot. "
        "Default: tagged when REDIS_CLUSTER=true, else document.",
    )
    tenant_id: str | None = Field(
        default=None,
        validation_alias=_env("TENANT_ID"),
        description="The tenant a RedisStreamsClient (and a projection process) is: it names "
        "only <prefix>:tenant:<TENANT_ID>:… keys (docs/tenancy.md). Unset: the deployment's "
        "own keys.",
    )
    max_retries: int = Field(default=3, ge=0, le=1000, validation_alias=_env("MAX_RETRIES"))
    dead_letter_ttl_s: int = Field(default=86400, ge=60, validation_alias=_env("DEAD_LETTER_TTL"))
    retry_base_delay_ms: int = Field(
        default=200, ge=0, validation_alias=_env("RETRY_BASE_DELAY_MS")
    )
    retry_max_delay_ms: int = Field(
        default=30_000, ge=0, validation_alias=_env("RETRY_MAX_DELAY_MS")
    )
    # Consumers (projections and RedisStreamsClient.consume_messages) take over the entries of
    # consumers idle this long, CLAIM_COUNT per stream every CLAIM_INTERVAL.
    claim_min_idle_ms: int = Field(default=30_000, ge=1, validation_alias=_env("CLAIM_MIN_IDLE_MS"))
    claim_interval_s: float = Field(default=5.0, gt=0, validation_alias=_env("CLAIM_INTERVAL"))
    claim_count: int = Field(default=500, ge=1, le=10_000, validation_alias=_env("CLAIM_COUNT"))
    dead_consumer_idle_ms: int = Field(
        default=600_000, ge=1, validation_alias=_env("DEAD_CONSUMER_IDLE_MS")
    )
    consumer_heartbeat_s: float = Field(
        default=5.0,
        gt=0,
        validation_alias=_env("CONSUMER_HEARTBEAT_INTERVAL"),
        description="How often a RedisStreamsClient consumer reports to <prefix>:consumers.",
    )

    @field_validator("tenant_id", mode="before")
    @classmethod
    def _check_tenant(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip() or None
        if value is not None:
            try:
                check_tenant_id(value)
            except ValueError as error:
                raise ValueError(f"TENANT_ID: {error}") from None
        return value

    @field_validator("redis_cluster", mode="before")
    @classmethod
    def _lower_cluster(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("stream_key_layout", mode="before")
    @classmethod
    def _lower_layout(cls, value: object) -> object:
        if isinstance(value, str):
            return value.strip().lower() or None
        return value

    @model_validator(mode="after")
    def _layout_fits_cluster(self) -> ClientSettings:
        if self.redis_cluster == "true" and self.redis_sentinels:
            raise ValueError(
                "REDIS_SENTINELS and REDIS_CLUSTER=true exclude each other: a Redis Cluster "
                "fails over by itself, Sentinel watches a single primary"
            )
        if self.redis_cluster == "true" and self.stream_key_layout == "document":
            raise ValueError(
                "STREAM_KEY_LAYOUT=document cannot work on a Redis Cluster: a service's streams "
                "would land in different slots; use tagged (the default with REDIS_CLUSTER=true)"
            )
        return self

    @property
    def cluster(self) -> bool:
        """REDIS_CLUSTER=true: a Redis Cluster client."""
        return self.redis_cluster == "true"

    @property
    def tagged_keys(self) -> bool:
        """Hash-tagged key names (STREAM_KEY_LAYOUT, by default tagged on a cluster)."""
        if self.stream_key_layout is None:
            return self.cluster
        return self.stream_key_layout == "tagged"

    def redis_url(self) -> str:
        """The URL to connect with: REDIS_STREAMS_URL, or with REDIS_SENTINELS the
        ``redis+sentinel://`` URL made of the sentinels, REDIS_SENTINEL_MASTER and
        REDIS_STREAMS_URL's credentials, TLS and database."""
        url = self.redis_streams_url.get_secret_value()
        if not self.redis_sentinels:
            return url
        scheme, _, rest = url.partition("://")
        userinfo, at, location = rest.rpartition("@")
        path = location.partition("/")[2]
        db = path.split("?", 1)[0] or "0"
        sentinels = ",".join(h.strip() for h in self.redis_sentinels.split(",") if h.strip())
        base = "rediss" if scheme == "rediss" else "redis"
        return f"{base}+sentinel://{userinfo}{at}{sentinels}/{self.redis_sentinel_master}/{db}"

    @property
    def sentinel(self) -> bool:
        """The primary is found through Redis Sentinel."""
        return "+sentinel://" in self.redis_url()

    def redis_password_text(self) -> str | None:
        return self.redis_password.get_secret_value() if self.redis_password else None


class Settings(ClientSettings, EmitSettings):
    """Configuration of the ``outbox`` commands (every component), read from the environment,
    and from ``.env`` when :func:`use_env_file` names one (the ``outbox`` command does)."""

    database_url: SecretStr = Field(
        default=SecretStr("postgresql://postgres@127.0.0.1:5432/opsconductor"),
        validation_alias=_env("DATABASE_URL"),
        description="PostgreSQL URL (libpq form); the driver suffix is added where needed.",
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto",
        validation_alias=_env("OUTBOX_EVENT_LOOP"),
        description="Event loop of the outbox commands: auto (uvloop when installed), uvloop, "
        "asyncio.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        validation_alias=_env("LOG_FORMAT"),
        description="Log lines of the outbox commands, on stderr: text (time, level, logger, "
        "message) or json (one object per line with timestamp, level, logger, event and the "
        "event's fields; secrets redacted).",
    )
    processor_workers: int = Field(
        default=4, ge=1, le=256, validation_alias=_env("PROCESSOR_WORKERS")
    )
    monitor_host: str = Field(default="127.0.0.1", validation_alias=_env("MONITOR_HOST"))
    monitor_port: int = Field(default=8090, ge=1, le=65535, validation_alias=_env("MONITOR_PORT"))
    refresh_interval_s: float = Field(
        default=5.0, gt=0, le=3600, validation_alias=_env("REFRESH_INTERVAL")
    )
    # The daemons' own /metrics, /health and /ready (outbox/probes.py): off unless a port is set.
    metrics_host: str = Field(
        default="127.0.0.1",
        validation_alias=_env("METRICS_HOST"),
        description="Address the relay's and projections' probe ports listen on (0.0.0.0 in a "
        "container whose probes come from outside).",
    )
    relay_metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        validation_alias=_env("RELAY_METRICS_PORT"),
        description="Port of `outbox relay`'s /metrics, /health, /ready (unset: none; 9464 in "
        "the docs' examples).",
    )
    projection_metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        validation_alias=_env("PROJECTION_METRICS_PORT"),
        description="Port of `outbox project`'s /metrics, /health, /ready (unset: none; 9465 "
        "in the docs' examples).",
    )

    # --- relay settings (relay/) ---
    relay_batch_size: int = Field(
        default=500,
        ge=1,
        le=10_000,
        validation_alias=_env("RELAY_BATCH_SIZE"),
        description="Most events the relay reads and publishes per service in one batch.",
    )
    relay_poll_min_ms: float = Field(
        default=2.0,
        gt=0,
        validation_alias=_env("RELAY_POLL_MIN_MS"),
        description="First idle wait after an empty poll; doubles while idle.",
    )
    relay_poll_max_ms: float = Field(
        default=50.0,
        gt=0,
        validation_alias=_env("RELAY_POLL_MAX_MS"),
        description="Longest idle wait between polls (the worst-case wake-up delay).",
    )
    relay_defer_after_ms: float = Field(
        default=250.0,
        ge=0,
        validation_alias=_env("RELAY_DEFER_AFTER_MS"),
        description="Age at which a write transaction of the outbox's own database is deferred: "
        "its events are published when it ends, after the events of later transactions, "
        "which no longer wait for it (decision 0020); 0 never defers.",
    )
    relay_notify_channel: str = Field(
        default="outbox_relay",
        validation_alias=_env("RELAY_NOTIFY_CHANNEL"),
        description="LISTEN channel; pg_notify on it wakes the relay at once. Empty: no LISTEN.",
    )
    relay_heartbeat_interval_s: float = Field(
        default=1.0,
        gt=0,
        validation_alias=_env("RELAY_HEARTBEAT_INTERVAL_S"),
        description="How often the relay writes its status row and rebalances leases.",
    )
    relay_shutdown_grace_s: float = Field(
        default=10.0,
        gt=0,
        validation_alias=_env("RELAY_SHUTDOWN_GRACE_S"),
        description="On SIGTERM/SIGINT: time to finish the batch and commit before giving up.",
    )
    relay_retry_min_s: float = Field(
        default=0.1,
        gt=0,
        validation_alias=_env("RELAY_RETRY_MIN_S"),
        description="First backoff after a failure (Redis/PostgreSQL down, stream refused).",
    )
    relay_retry_max_s: float = Field(
        default=10.0,
        gt=0,
        validation_alias=_env("RELAY_RETRY_MAX_S"),
        description="Longest backoff after repeated failures (jittered).",
    )
    relay_trim_interval_s: float = Field(
        default=60.0,
        ge=0,
        validation_alias=_env("RELAY_TRIM_INTERVAL_S"),
        description="How often the relay trims its streams and the dead letters; 0: never.",
    )
    relay_stream_retention_s: float = Field(
        default=3600.0,
        ge=0,
        validation_alias=_env("RELAY_STREAM_RETENTION_S"),
        description="Entries younger than this are kept even when every group has acked them.",
    )
    relay_instance_id: str | None = Field(
        default=None,
        validation_alias=_env("RELAY_INSTANCE_ID"),
        description="Name of this relay in its status row; default <host>-<pid>-<random>.",
    )
    relay_leases: bool = Field(
        default=True,
        validation_alias=_env("RELAY_LEASES"),
        description="Share services out through leases; false (tests only) relays every service.",
    )
    routing_rules: str = Field(
        default="",
        validation_alias=_env("ROUTING_RULES"),
        description="Routing rules as JSON: a list of rules that copy or route events to "
        "further streams (docs/routing.md); validated when the relay starts.",
    )
    routing_rules_file: str | None = Field(
        default=None,
        validation_alias=_env("ROUTING_RULES_FILE"),
        description="A file of routing rules instead: TOML ([[rules]] tables) when it ends in "
        ".toml, else JSON (docs/routing.md).",
    )
    tenant_streams: str = Field(
        default="",
        validation_alias=_env("TENANT_STREAMS"),
        description="Comma-separated services whose events of a tenant go to the tenant's own "
        "streams (<prefix>:tenant:<tenant>:<service>:events), or * for every service; events "
        "without a tenant stay on the service's streams (docs/tenancy.md).",
    )

    @field_validator("tenant_streams")
    @classmethod
    def _check_tenant_streams(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        if names == ["*"]:
            return "*"
        for name in names:
            if not _NAME.match(name):
                raise ValueError(
                    f"TENANT_STREAMS: {name!r} is not a service name (^[a-z][a-z0-9_-]{{0,62}}$), "
                    "nor is the list '*'"
                )
        return ",".join(names)

    def tenant_streamed(self) -> Callable[[str], bool]:
        """Whether a service's tenant events go to tenants' streams (TENANT_STREAMS)."""
        if self.tenant_streams == "*":
            return lambda service: True
        services = frozenset(n for n in self.tenant_streams.split(",") if n)
        return services.__contains__

    # --- projection settings (projections/) ---
    projection_batch_size: int = Field(
        default=500, ge=1, le=10_000, validation_alias=_env("PROJECTION_BATCH_SIZE")
    )
    projection_block_ms: int = Field(
        default=1000, ge=1, le=60_000, validation_alias=_env("PROJECTION_BLOCK_MS")
    )
    projection_modules: str = Field(
        default="",
        validation_alias=_env("PROJECTION_MODULES"),
        description="Comma-separated modules imported by `outbox project` to register projections "
        "(the demo's: outbox.projections.examples).",
    )
    projection_consumer_name: str | None = Field(
        default=None,
        validation_alias=_env("PROJECTION_CONSUMER_NAME"),
        description="Consumer name stem (default: host name); workers are <stem>-<index>.",
    )
    partition_lease_s: float = Field(
        default=6.0,
        ge=1,
        le=600,
        validation_alias=_env("PARTITION_LEASE_S"),
        description="How long a consumer owns a partition without renewing it (renewed every "
        "quarter of it); a dead consumer's partitions are taken over after at most this.",
    )
    inbox_retention_s: int = Field(
        default=7 * 86400, ge=60, validation_alias=_env("INBOX_RETENTION")
    )
    shutdown_grace_s: float = Field(default=30.0, gt=0, validation_alias=_env("SHUTDOWN_GRACE"))
    projection_heartbeat_s: float = Field(
        default=5.0, gt=0, validation_alias=_env("PROJECTION_HEARTBEAT_INTERVAL")
    )

    # --- monitor settings (monitor/) ---
    monitor_admin_token: SecretStr | None = Field(
        default=None,
        validation_alias=_env("MONITOR_ADMIN_TOKEN"),
        description="Bearer token for the monitor's write actions; unset refuses them all.",
    )
    monitor_admin_token_name: str = Field(
        default="admin",
        min_length=1,
        max_length=200,
        validation_alias=_env("MONITOR_ADMIN_TOKEN_NAME"),
        description="Who the audit log names for the monitor's write actions (never the token).",
    )
    monitor_tenant_tokens: SecretStr | None = Field(
        default=None,
        validation_alias=_env("MONITOR_TENANT_TOKENS"),
        description="Comma-separated <tenant>:<token> pairs (a tenant may have several tokens, "
        "for rotation). Set: every /api/* request and /ws needs a bearer token, "
        "MONITOR_ADMIN_TOKEN sees everything, a tenant's token only its tenant, read-only "
        "(docs/monitor.md#tenants).",
    )
    monitor_mask_fields: str = Field(
        default="password,token,secret,email",
        validation_alias=_env("MONITOR_MASK_FIELDS"),
        description="Comma-separated payload field names masked in every monitor response.",
    )
    monitor_allowed_origins: str = Field(
        default="",
        validation_alias=_env("MONITOR_ALLOWED_ORIGINS"),
        description="Extra Origins allowed on /ws (comma-separated); the page's own is always.",
    )
    monitor_window_s: float = Field(
        default=300.0, ge=10, le=86400, validation_alias=_env("MONITOR_WINDOW")
    )
    monitor_services: str = Field(
        default="identity,assets,automation,communication,ai,network,system",
        validation_alias=_env("MONITOR_SERVICES"),
        description="Services always shown, besides those found in the outbox.",
    )
    metrics_stream_retention_s: int = Field(
        default=86400, ge=60, validation_alias=_env("METRICS_STREAM_RETENTION")
    )

    @field_validator("monitor_tenant_tokens")
    @classmethod
    def _check_tenant_tokens(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip():
            parse_tenant_tokens(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _tenant_tokens_apart_from_admin(self) -> Settings:
        admin = self.monitor_admin_token.get_secret_value() if self.monitor_admin_token else ""
        if admin and any(token == admin for _, token in self.tenant_tokens()):
            raise ValueError("MONITOR_TENANT_TOKENS: a tenant token equals MONITOR_ADMIN_TOKEN")
        return self

    def tenant_tokens(self) -> list[tuple[str, str]]:
        """``(tenant, token)`` of MONITOR_TENANT_TOKENS; empty when unset."""
        text = self.monitor_tenant_tokens.get_secret_value() if self.monitor_tenant_tokens else ""
        return parse_tenant_tokens(text) if text.strip() else []

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_log_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

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

    def monitor_url(self) -> str:
        """The monitor's base URL as a client on this machine reaches it (ends in ``/``): an
        address meaning "every interface" (``0.0.0.0``, ``::``) is asked over loopback."""
        host = self.monitor_host.strip("[]")
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.monitor_port}/"


#: A tenant token is a secret a person pastes into a dashboard or a Prometheus job: long enough
#: not to be guessed, and free of the separators of MONITOR_TENANT_TOKENS.
_TENANT_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")


def parse_tenant_tokens(text: str) -> list[tuple[str, str]]:
    """``(tenant, token)`` pairs of ``acme:<token>,globex:<token>``. A malformed entry is named
    by its place in the list, never by its token (the message ends up in logs)."""
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for place, entry in enumerate((e.strip() for e in text.split(",")), start=1):
        if not entry:
            continue
        tenant, sep, token = entry.partition(":")
        if not sep:
            raise ValueError(f"MONITOR_TENANT_TOKENS entry {place}: expected <tenant>:<token>")
        try:
            check_tenant_id(tenant.strip())
        except ValueError as error:
            raise ValueError(f"MONITOR_TENANT_TOKENS entry {place}: {error}") from None
        if not _TENANT_TOKEN.match(token.strip()):
            raise ValueError(
                f"MONITOR_TENANT_TOKENS entry {place} ({tenant.strip()}): a token is 16 to 512 "
                "characters of letters, digits and ._~+/=-"
            )
        if token.strip() in seen:
            raise ValueError(f"MONITOR_TENANT_TOKENS entry {place}: a token is given twice")
        seen.add(token.strip())
        pairs.append((tenant.strip(), token.strip()))
    if not pairs:
        raise ValueError("MONITOR_TENANT_TOKENS is set but names no <tenant>:<token>")
    return pairs


def redact_url(url: str) -> str:
    """``scheme://user:***@host/…``: a URL with its password (if any) hidden, for logs, errors
    and anything shown to a person."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user + ':***' if ':' in credentials else user}@{host}"


_env_file: str | None = None


def use_env_file(path: str | None) -> None:
    """Let :func:`get_settings` also read ``path`` (a ``.env``; missing is fine). Only the
    ``outbox`` command calls this: a library never reads a ``.env`` implicitly."""
    global _env_file
    _env_file = path
    get_settings.cache_clear()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The command's settings, read once (from the environment, and the env file if one was
    set with :func:`use_env_file`)."""
    return Settings(_env_file=_env_file)  # type: ignore[call-arg]


_emit_settings: EmitSettings | None = None


def _describe(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc'])}={problem.get('input')!r}: "
        f"{problem['msg']}"
        for problem in error.errors()
    )


def configure(
    *,
    schema: str | None = None,
    max_payload_bytes: int | None = None,
    stream_prefix: str | None = None,
) -> EmitSettings:
    """Set what ``emit()`` uses, in code, for the whole process; returns the settings in force.

    Each value left out comes from its environment variable (``OUTBOX_SCHEMA``,
    ``OUTBOX_MAX_PAYLOAD_BYTES``, ``STREAM_PREFIX``) or its default. A bad value raises
    :class:`~outbox.errors.ConfigurationError` and changes nothing.
    """
    global _emit_settings
    given: dict[str, Any] = {
        name: value
        for name, value in (
            ("outbox_schema", schema),
            ("max_payload_bytes", max_payload_bytes),
            ("stream_prefix", stream_prefix),
        )
        if value is not None
    }
    try:
        settings = EmitSettings(**given)
    except ValidationError as error:
        raise ConfigurationError(f"invalid outbox setting: {_describe(error)}") from None
    _emit_settings = settings
    keys_from(None)  # the keys too come from these settings now, unless set in code
    return settings


def emit_settings() -> EmitSettings:
    """What ``emit()`` uses: set by :func:`configure`, else read from the environment once."""
    settings = _emit_settings
    if settings is None:
        settings = configure()
    return settings


def client_settings() -> ClientSettings:
    """What the streams client uses, read from the environment now."""
    try:
        return ClientSettings()
    except ValidationError as error:
        raise ConfigurationError(f"invalid streams client setting: {_describe(error)}") from None


def reset_emit_settings() -> None:
    """Forget what :func:`configure` set; the next emit reads the environment again."""
    global _emit_settings
    _emit_settings = None
    keys_from(None)
