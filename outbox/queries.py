"""Every SQL statement of the ``outbox`` package, in one place.

Each statement is written once with ``:name`` parameters and bare table names; :class:`Query`
renders it with ``$n`` placeholders for asyncpg, so SQLAlchemy connections and raw asyncpg
connections run the same text, and :meth:`Query.in_schema` qualifies its tables with
``OUTBOX_SCHEMA`` (:mod:`outbox.naming`). SQLAlchemy is imported only when a SQLAlchemy
connection runs a statement: a service on raw asyncpg never loads it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from outbox.naming import in_schema

if TYPE_CHECKING:
    from sqlalchemy import TextClause

_PARAM = re.compile(r"(?<![:\w]):(\w+)")


@dataclass(frozen=True)
class Query:
    name: str
    sql: str
    asyncpg_sql: str = field(init=False, repr=False)
    param_names: tuple[str, ...] = field(init=False, repr=False)
    _rendered: dict[str, Query] = field(init=False, repr=False, compare=False)
    _text: list[TextClause] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        object.__setattr__(self, "asyncpg_sql", _PARAM.sub(number, self.sql))
        object.__setattr__(self, "param_names", tuple(names))
        object.__setattr__(self, "_rendered", {})
        object.__setattr__(self, "_text", [])

    @property
    def sqlalchemy(self) -> TextClause:
        """The statement as a SQLAlchemy ``text()`` clause (made on first use)."""
        if not self._text:
            from sqlalchemy import text

            self._text.append(text(self.sql))
        return self._text[0]

    def asyncpg_args(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self.param_names]

    def in_schema(self, schema: str) -> Query:
        """This statement with the outbox tables in ``schema`` (rendered once per schema)."""
        rendered = self._rendered.get(schema)
        if rendered is None:
            rendered = self._rendered[schema] = Query(self.name, in_schema(self.sql, schema))
        return rendered


_COLUMNS = """event_id, stream, event_type, source, aggregate_id, priority, payload, headers,
               correlation_id, causation_id, user_id, traceparent, dedup_key, tenant_id"""

# One event: scalar parameters (cheaper to encode than one-element arrays).
INSERT_EVENT = Query(
    "insert_event",
    f"""
    INSERT INTO outbox_events ({_COLUMNS})
    VALUES (:event_id, :stream, :event_type, :source, :aggregate_id, :priority,
            CAST(:payload AS jsonb), CAST(:headers AS jsonb), :correlation_id, :causation_id,
            :user_id, :traceparent, :dedup_key, :tenant_id)
    ON CONFLICT (stream, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING
    RETURNING event_id, position, occurred_at
    """,
)

# Many events: the same parameters as arrays, unnested server-side, so a batch is one round
# trip. A repeated dedup key (per stream) conflicts with the partial unique index and is skipped;
# RETURNING then tells which events were written.
INSERT_EVENTS = Query(
    "insert_events",
    f"""
    INSERT INTO outbox_events ({_COLUMNS})
    SELECT e.event_id, e.stream, e.event_type, e.source, e.aggregate_id, e.priority,
           e.payload::jsonb, e.headers::jsonb, e.correlation_id, e.causation_id, e.user_id,
           e.traceparent, e.dedup_key, e.tenant_id
      FROM unnest(CAST(:event_id AS uuid[]), CAST(:stream AS text[]),
                  CAST(:event_type AS text[]), CAST(:source AS text[]),
                  CAST(:aggregate_id AS text[]), CAST(:priority AS smallint[]),
                  CAST(:payload AS text[]), CAST(:headers AS text[]),
                  CAST(:correlation_id AS text[]), CAST(:causation_id AS text[]),
                  CAST(:user_id AS text[]), CAST(:traceparent AS text[]),
                  CAST(:dedup_key AS text[]), CAST(:tenant_id AS text[]))
           AS e(event_id, stream, event_type, source, aggregate_id, priority, payload, headers,
                correlation_id, causation_id, user_id, traceparent, dedup_key, tenant_id)
    ON CONFLICT (stream, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING
    RETURNING event_id, position, occurred_at
    """,
)

# The events already stored under the given (stream, dedup_key) pairs.
SELECT_BY_DEDUP_KEYS = Query(
    "select_by_dedup_keys",
    """
    SELECT o.position, o.event_id, o.stream, o.event_type, o.source, o.aggregate_id, o.priority,
           o.payload::text AS payload, o.headers::text AS headers, o.correlation_id,
           o.causation_id, o.user_id, o.traceparent, o.dedup_key, o.occurred_at, o.tenant_id
      FROM unnest(CAST(:streams AS text[]), CAST(:dedup_keys AS text[])) AS k(stream, dedup_key)
      JOIN outbox_events o ON o.stream = k.stream AND o.dedup_key = k.dedup_key
    """,
)
