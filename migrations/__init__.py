"""Alembic environment and versions of the outbox schema (the only place the schema changes).

Two ways to run them beside a service's own alembic history (docs/adopting.md):

- ``outbox migrate``: its own version table (``outbox_alembic_version``, in OUTBOX_SCHEMA), so
  it never touches the service's ``alembic_version``. The lead recommendation.
- In the service's own alembic env: add ``outbox.migrations:versions`` to its
  ``version_locations`` (our revisions carry the branch label ``outbox``) and pass
  :func:`include_name` / :func:`include_object` to ``context.configure`` so autogenerate
  leaves the outbox's tables alone.

Either way the revisions create every table in :func:`target_schema`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from outbox.naming import DEFAULT_SCHEMA, TABLES

SCRIPT_LOCATION = str(Path(__file__).resolve().parent)
VERSIONS_LOCATION = str(Path(__file__).resolve().parent / "versions")
VERSION_TABLE = "outbox_alembic_version"
BRANCH_LABEL = "outbox"
#: alembic ``Config.attributes`` key that overrides OUTBOX_SCHEMA for one run.
SCHEMA_ATTRIBUTE = "outbox_schema"

#: Everything of ours autogenerate must leave alone: the tables and our version table.
OWN_TABLES = frozenset({*TABLES, VERSION_TABLE})


def target_schema() -> str:
    """The schema our revisions create and change tables in: the alembic config attribute
    ``outbox_schema`` when the running environment sets one, else OUTBOX_SCHEMA (or what
    ``outbox.configure(schema=...)`` set), default ``public``."""
    from alembic import context

    from outbox.settings import emit_settings

    try:
        attributes = context.config.attributes
    except (AttributeError, NameError):  # not inside an alembic environment run
        attributes = {}
    schema = attributes.get(SCHEMA_ATTRIBUTE)
    return str(schema) if schema else emit_settings().outbox_schema


def _ours(name: str | None, schema: str | None) -> bool:
    outbox_schema = target_schema()
    return name in OWN_TABLES and (schema or DEFAULT_SCHEMA) == outbox_schema


def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    """For ``context.configure(include_name=...)`` in a service's env.py: False for the
    outbox's tables (and, with ``include_schemas=True``, for a schema of its own), so
    autogenerate neither reflects nor proposes dropping them."""
    if type_ == "schema":
        outbox_schema = target_schema()
        return outbox_schema == DEFAULT_SCHEMA or name != outbox_schema
    if type_ == "table":
        return not _ours(name, parent_names.get("schema_name"))
    return True


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """For ``context.configure(include_object=...)``: False for the outbox's tables and
    everything on them (indexes, constraints), whichever side they were found on."""
    if type_ == "table":
        return not _ours(name, getattr(obj, "schema", None))
    table = getattr(obj, "table", None)
    if table is not None:
        return not _ours(getattr(table, "name", None), getattr(table, "schema", None))
    return True
