"""Alembic environment of the example read models (``outbox migrate --examples``): their own
version table, ``outbox_examples_alembic_version``, in the connection's default schema."""

from __future__ import annotations

from outbox.migrations.environment import run
from outbox.projections.examples.schema import metadata

VERSION_TABLE = "outbox_examples_alembic_version"

run(VERSION_TABLE, metadata, None)
