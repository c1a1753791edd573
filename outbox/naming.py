"""Where the outbox's tables live in PostgreSQL: ``OUTBOX_SCHEMA`` and the statements that name it.

Every statement is written once with the bare table names (``outbox_events``, ``relay_cursors``,
…) and run with each of them qualified by the configured schema (``"outbox".outbox_events``).
Qualifying, rather than setting ``search_path``, is what lets ``emit()`` run on the caller's
own connection, whose ``search_path`` is the service's business (OpsConductor's services use
schema-qualified SQL with ``search_path`` set to their own schema), and works behind a
transaction-pooling proxy that resets session settings.
"""

from __future__ import annotations

import re
from functools import lru_cache

#: A plain (unquoted, lower-case) PostgreSQL identifier: what OUTBOX_SCHEMA may be.
SCHEMA_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

DEFAULT_SCHEMA = "public"

#: Every table of the outbox (the core migrations create exactly these).
TABLES = (
    "outbox_events",
    "relay_cursors",
    "relay_instances",
    "relay_deferred",
    "outbox_source",
    "projection_inbox",
    "projection_consumers",
    "projection_checkpoints",
    "stream_partitions",
    "projection_partitions",
    "projection_members",
    "outbox_audit",
)

#: Every sequence of the outbox that statements name (as tables are, qualified by the schema).
SEQUENCES = ("relay_deferral_seq",)

# A bare table name: not part of a longer identifier (outbox_events_pkey), not already
# qualified (x.outbox_events) and not quoted.
_TABLE = re.compile(r'(?<![\w."])(' + "|".join(TABLES + SEQUENCES) + r')(?![\w"])')


def quote(schema: str) -> str:
    """``"schema"``: the schema as a quoted identifier (it matches SCHEMA_PATTERN, so no quote
    inside needs escaping)."""
    if not SCHEMA_PATTERN.match(schema):
        raise ValueError(f"not a plain PostgreSQL schema name: {schema!r}")
    return f'"{schema}"'


@lru_cache(maxsize=1024)
def in_schema(sql: str, schema: str) -> str:
    """``sql`` with every outbox table qualified by ``schema``.

    Cached: a statement is rendered once per schema, then each call is one dictionary lookup
    (a ``str`` keeps its hash).
    """
    prefix = quote(schema) + "."
    return _TABLE.sub(lambda match: prefix + match.group(1), sql)


def table(name: str, schema: str) -> str:
    """``"schema".name`` for one outbox table."""
    if name not in TABLES:
        raise ValueError(f"not an outbox table: {name!r}")
    return f"{quote(schema)}.{name}"
