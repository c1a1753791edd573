"""Deferred transactions: long write transactions of the outbox's own database no longer hold
the relay (decision 0020).

``relay_deferred``: one row. ``txids`` lists the transactions the relay has passed over while
they were still running (deferred): every read leaves their rows out and stops at ``cap`` until,
after they end, a relay moves those rows just below the cap (restamp), so they are read once,
after everything already published. ``generation`` is the number of the last deferral that
committed; ``relay_deferral_seq`` (not transactional) the number of the last one begun. A read
that sees a deferral begun but not committed reads nothing, so no read can see a deferred
transaction's rows under their first txid.

Online: two new objects and one row; the outbox tables are not touched.

Revision ID: 0010_relay_deferred
Revises: 0009_tenants
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from outbox.migrations import target_schema
from outbox.naming import quote
from outbox.schema import XID8

revision: str = "0010_relay_deferred"
down_revision: str | None = "0009_tenants"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema = target_schema()
    q = quote(schema)
    op.create_table(
        "relay_deferred",
        sa.Column("id", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("generation", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column(
            "txids",
            postgresql.ARRAY(XID8()),
            nullable=False,
            server_default=sa.text("'{}'::xid8[]"),
        ),
        sa.Column("cap", XID8(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.PrimaryKeyConstraint("id", name="relay_deferred_pkey"),
        sa.CheckConstraint("id", name="relay_deferred_one_row"),
        schema=schema,
    )
    op.execute(f"INSERT INTO {q}.relay_deferred (id) VALUES (true)")
    op.execute(f"CREATE SEQUENCE {q}.relay_deferral_seq")


def downgrade() -> None:
    q = quote(target_schema())
    op.execute(f"DROP SEQUENCE {q}.relay_deferral_seq")
    op.drop_table("relay_deferred", schema=target_schema())
