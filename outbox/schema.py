"""Table definitions of the outbox log. Migrations in ``migrations/`` create exactly these.

``outbox_events`` is an append-only log. The relay reads it with the gap-safe cursor
``(txid, position)``: ``txid`` is the writing transaction's id (``xid8``, never wraps), and a row
is read only once its transaction is older than every running one (DESIGN.md invariant 2).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import UserDefinedType

metadata = sa.MetaData()


class XID8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id type (``xid8``, PostgreSQL 13+)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


# Reflection (alembic's compare, the migration test) must know the type too.
postgresql.base.ischema_names["xid8"] = XID8

outbox_events = sa.Table(
    "outbox_events",
    metadata,
    sa.Column("position", sa.BigInteger, sa.Identity(always=True), nullable=False),
    sa.Column("txid", XID8(), nullable=False, server_default=sa.text("pg_current_xact_id()")),
    sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=False),
    sa.Column("stream", sa.Text, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("aggregate_id", sa.Text, nullable=True),
    sa.Column("priority", sa.SmallInteger, nullable=False, server_default=sa.text("1")),
    sa.Column("payload", postgresql.JSONB, nullable=False),
    sa.Column("headers", postgresql.JSONB, nullable=True),
    sa.Column("correlation_id", sa.Text, nullable=False),
    sa.Column("causation_id", sa.Text, nullable=True),
    sa.Column("user_id", sa.Text, nullable=True),
    sa.Column("traceparent", sa.Text, nullable=True),
    sa.Column("dedup_key", sa.Text, nullable=True),
    sa.Column(
        "occurred_at",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.text("clock_timestamp()"),
    ),
    # The event's tenant (migration 0009, docs/tenancy.md); NULL: the deployment's own.
    sa.Column("tenant_id", sa.Text, nullable=True),
    sa.PrimaryKeyConstraint("position", name="outbox_events_pkey"),
    sa.UniqueConstraint("event_id", name="outbox_events_event_id_key"),
    sa.CheckConstraint("priority BETWEEN 0 AND 3", name="outbox_events_priority_check"),
    sa.CheckConstraint(
        "tenant_id ~ '^[a-z0-9][a-z0-9_-]{0,62}$' AND tenant_id <> 'events'",
        name="outbox_events_tenant_id_check",
    ),
    # The relay's scan: per stream, in cursor order.
    sa.Index("outbox_events_stream_cursor_idx", "stream", "txid", "position"),
    sa.Index("outbox_events_correlation_idx", "correlation_id"),
    # Partial: rows without a dedup key (the common case) cost this index nothing.
    sa.Index(
        "outbox_events_stream_dedup_key_idx",
        "stream",
        "dedup_key",
        unique=True,
        postgresql_where=sa.text("dedup_key IS NOT NULL"),
    ),
)

# --- relay state (relay/) ---

# One row per outbox stream (service): the relay's gap-safe cursor, the (txid, position) of the
# last event published. Every relay instance shares it; updates only ever move it forward.
relay_cursors = sa.Table(
    "relay_cursors",
    metadata,
    sa.Column("stream", sa.Text, nullable=False),
    sa.Column("txid", XID8(), nullable=False),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    ),
    # {stream key: "<txid>:<position>"}: the watermark each of the service's streams was seen to
    # take, committed with the cursor (migration 0005, decision 0011).
    sa.Column("marks", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.PrimaryKeyConstraint("stream", name="relay_cursors_pkey"),
)

# One row: the transactions the relay has deferred (passed over while still running, their rows
# left out of every read until a relay moves them just below ``cap`` after they end), the cap
# no read passes meanwhile, and the number of the last deferral committed;
# ``relay_deferral_seq`` numbers the deferrals begun (migration 0010, decision 0020).
relay_deferred = sa.Table(
    "relay_deferred",
    metadata,
    sa.Column("id", sa.Boolean, nullable=False, server_default=sa.text("true")),
    sa.Column("generation", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column(
        "txids", postgresql.ARRAY(XID8()), nullable=False, server_default=sa.text("'{}'::xid8[]")
    ),
    sa.Column("cap", XID8(), nullable=True),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    ),
    sa.PrimaryKeyConstraint("id", name="relay_deferred_pkey"),
    sa.CheckConstraint("id", name="relay_deferred_one_row"),
)

# One row: this outbox's source id, recorded beside each Redis stream's watermark so that a
# stream written from two databases is refused instead of skipping events (migration 0012).
outbox_source = sa.Table(
    "outbox_source",
    metadata,
    sa.Column("id", sa.Boolean, nullable=False, server_default=sa.text("true")),
    sa.Column(
        "source_id",
        postgresql.UUID(as_uuid=True),
        nullable=False,
        server_default=sa.text("gen_random_uuid()"),
    ),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    ),
    sa.PrimaryKeyConstraint("id", name="outbox_source_pkey"),
    sa.CheckConstraint("id", name="outbox_source_one_row"),
)

# One status row per relay process, written on every heartbeat; read by the monitor.
relay_instances = sa.Table(
    "relay_instances",
    metadata,
    sa.Column("instance_id", sa.Text, nullable=False),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column(
        "started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    ),
    sa.Column(
        "heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    ),
    sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
    # Services whose lease this relay holds, and its cursor of each ("<txid>:<position>").
    sa.Column(
        "streams",
        postgresql.ARRAY(sa.Text),
        nullable=False,
        server_default=sa.text("'{}'::text[]"),
    ),
    sa.Column("cursors", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    # Services stopped because Redis refuses them (WRONGTYPE, OOM): service -> reason.
    sa.Column(
        "stream_errors", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")
    ),
    # Services whose lost events it publishes again: service -> its cursor (decision 0011).
    sa.Column(
        "republishing", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")
    ),
    sa.Column("published_count", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    # Times the relay found Redis had lost events it acknowledged (migration 0006, decision 0011).
    sa.Column("redis_losses", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("instance_id", name="relay_instances_pkey"),
)

# --- partitions (relay/ and projections/, migration 0007, decision 0014) ---

# One row per service that is or was partitioned; a service without one has one partition.
stream_partitions = sa.Table(
    "stream_partitions",
    metadata,
    sa.Column("stream", sa.Text, nullable=False),
    sa.Column("partitions", sa.Integer, nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("since_txid", XID8(), nullable=True),
    sa.Column("since_position", sa.BigInteger, nullable=True),
    # A new count asked for (outbox partitions set), applied by the relay between two batches.
    sa.Column("requested", sa.Integer, nullable=True),
    # [{"epoch": e, "partitions": n}, …] for every epoch from 1: what each epoch's streams are.
    sa.Column("history", postgresql.JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    ),
    sa.PrimaryKeyConstraint("stream", name="stream_partitions_pkey"),
    sa.CheckConstraint(
        "partitions BETWEEN 1 AND 1024 AND (requested IS NULL OR requested BETWEEN 1 AND 1024)",
        name="stream_partitions_count_check",
    ),
)

# Who consumes each partition of a projection, with its fencing token and checkpoints.
projection_partitions = sa.Table(
    "projection_partitions",
    metadata,
    sa.Column("projection", sa.Text, nullable=False),
    sa.Column("stream", sa.Text, nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("owner", sa.Text, nullable=True),
    sa.Column("fence", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
    # {stream key: last applied entry id} of the partition's priority streams.
    sa.Column(
        "checkpoints", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")
    ),
    sa.Column("drained", sa.Boolean, nullable=False, server_default=sa.text("false")),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    ),
    sa.PrimaryKeyConstraint(
        "projection", "stream", "epoch", "partition", name="projection_partitions_pkey"
    ),
)

# The members sharing a projection's partitions of a service: one per consuming process.
projection_members = sa.Table(
    "projection_members",
    metadata,
    sa.Column("projection", sa.Text, nullable=False),
    sa.Column("stream", sa.Text, nullable=False),
    sa.Column("member", sa.Text, nullable=False),
    sa.Column(
        "heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
    ),
    sa.PrimaryKeyConstraint("projection", "stream", "member", name="projection_members_pkey"),
)

# --- audit log (outbox/audit.py, migration 0008) ---

# One row per administrative action (DLQ replay/purge, rebuild, prune, partitions, …): who, when,
# what and how many. Append-only: a trigger of migration 0008 refuses UPDATE, DELETE and TRUNCATE.
outbox_audit = sa.Table(
    "outbox_audit",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    # The OS user (CLI) or the admin token's name (monitor); never the token itself.
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("via", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=True),
    sa.Column("counts", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("details", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("host", sa.Text, nullable=True),
    sa.PrimaryKeyConstraint("id", name="outbox_audit_pkey"),
    sa.CheckConstraint("via IN ('cli', 'monitor')", name="outbox_audit_via_check"),
    sa.Index("outbox_audit_at_idx", "at"),
)
