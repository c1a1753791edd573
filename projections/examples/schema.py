"""Table definitions of the example read models, apart from the outbox's own tables.

A service's read models are its own business: the outbox's migrations never create them. These
examples have their own alembic history (``migrations/`` beside this file, run by
``outbox migrate --examples``), whose revisions create exactly these tables, in the connection's
default schema, where the example handlers' unqualified SQL finds them.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

_NOW = sa.text("now()")

directory_users = sa.Table(
    "directory_users",
    metadata,
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("email", sa.Text, nullable=True),
    sa.Column("name", sa.Text, nullable=True),
    sa.Column("role", sa.Text, nullable=True),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.text("false")),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
    # Version of the last delete (0: never deleted); ``deleted`` is deleted_version > version.
    sa.Column("deleted_version", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.PrimaryKeyConstraint("user_id", name="directory_users_pkey"),
)

inventory_assets = sa.Table(
    "inventory_assets",
    metadata,
    sa.Column("asset_id", sa.Text, nullable=False),
    sa.Column("hostname", sa.Text, nullable=True),
    sa.Column("ip_address", sa.Text, nullable=True),
    sa.Column("asset_type", sa.Text, nullable=True),
    sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.text("false")),
    sa.Column("version", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("scan_count", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("last_scanned_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
    sa.Column("deleted_version", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.PrimaryKeyConstraint("asset_id", name="inventory_assets_pkey"),
)

automation_job_stats = sa.Table(
    "automation_job_stats",
    metadata,
    sa.Column("job_name", sa.Text, nullable=False),
    sa.Column("started", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("completed", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("failed", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("total_duration_ms", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("job_name", name="automation_job_stats_pkey"),
)
