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
    sa.PrimaryKeyConstraint("position", name="outbox_events_pkey"),
    sa.UniqueConstraint("event_id", name="outbox_events_event_id_key"),
    sa.CheckConstraint("priority BETWEEN 0 AND 3", name="outbox_events_priority_check"),
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
