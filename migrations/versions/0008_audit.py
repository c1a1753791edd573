"""The audit log: one append-only row per administrative action.

``outbox_audit``: who (the OS user of a command, the admin token's name in the monitor), when,
through what (``cli`` or ``monitor``), which action on which target, and its counts. A trigger
refuses every UPDATE, DELETE and TRUNCATE, so the rows can only be added to: only the table's
owner can get rid of them, by dropping the trigger or the table, which is itself a schema change
(docs/operations.md, "Audit log").

Revision ID: 0008_audit
Revises: 0007_partitions
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from outbox.migrations import target_schema
from outbox.naming import quote

revision: str = "0008_audit"
down_revision: str | None = "0007_partitions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EMPTY = sa.text("'{}'::jsonb")


def upgrade() -> None:
    schema = target_schema()
    op.create_table(
        "outbox_audit",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("via", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=True),
        sa.Column("counts", postgresql.JSONB, nullable=False, server_default=_EMPTY),
        sa.Column("details", postgresql.JSONB, nullable=False, server_default=_EMPTY),
        sa.Column("host", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="outbox_audit_pkey"),
        sa.CheckConstraint("via IN ('cli', 'monitor')", name="outbox_audit_via_check"),
        schema=schema,
    )
    op.create_index("outbox_audit_at_idx", "outbox_audit", ["at"], schema=schema)
    q = quote(schema)
    # A rule could only turn the statement into nothing, silently; the trigger makes it fail.
    # TRUNCATE fires no row trigger, hence the statement-level one
    # (https://www.postgresql.org/docs/15/sql-createtrigger.html).
    op.execute(
        f"""
        CREATE FUNCTION {q}.outbox_audit_refuse_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'outbox_audit is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        f"CREATE TRIGGER outbox_audit_append_only BEFORE UPDATE OR DELETE ON {q}.outbox_audit "
        f"FOR EACH ROW EXECUTE FUNCTION {q}.outbox_audit_refuse_change()"
    )
    op.execute(
        f"CREATE TRIGGER outbox_audit_no_truncate BEFORE TRUNCATE ON {q}.outbox_audit "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {q}.outbox_audit_refuse_change()"
    )
    # ALWAYS: they fire under session_replication_role = replica too, which otherwise turns
    # ordinary triggers off (https://www.postgresql.org/docs/15/sql-altertable.html).
    for trigger in ("outbox_audit_append_only", "outbox_audit_no_truncate"):
        op.execute(f"ALTER TABLE {q}.outbox_audit ENABLE ALWAYS TRIGGER {trigger}")


def downgrade() -> None:
    schema = target_schema()
    op.drop_table("outbox_audit", schema=schema)  # its triggers go with it
    op.execute(f"DROP FUNCTION {quote(schema)}.outbox_audit_refuse_change()")
