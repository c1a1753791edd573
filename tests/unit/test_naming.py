"""OUTBOX_SCHEMA: statements name the outbox's tables with their schema, and nothing else."""

from __future__ import annotations

import pytest

from outbox.naming import in_schema, quote, table
from outbox.queries import INSERT_EVENT
from outbox.relay import queries as relay_queries
from outbox.relay.queries import LEASE_LOCK_SPACE, PRESENCE_LOCK_SPACE, presence_lock_space


def test_bare_table_names_are_qualified_and_nothing_else() -> None:
    sql = (
        "SELECT o.position FROM outbox_events o JOIN relay_cursors c ON c.stream = o.stream"
        " WHERE NOT EXISTS (SELECT 1 FROM projection_inbox i) -- outbox_events_pkey"
    )
    assert in_schema(sql, "outbox") == (
        'SELECT o.position FROM "outbox".outbox_events o JOIN "outbox".relay_cursors c'
        ' ON c.stream = o.stream WHERE NOT EXISTS (SELECT 1 FROM "outbox".projection_inbox i)'
        " -- outbox_events_pkey"
    )


def test_already_qualified_or_longer_names_are_left_alone() -> None:
    sql = 'SELECT * FROM x.outbox_events, "outbox_events", outbox_events_stream_cursor_idx'
    assert in_schema(sql, "outbox") == sql


def test_every_relay_statement_names_only_qualified_tables() -> None:
    for text in (relay_queries.FETCH_BATCH, relay_queries.PRUNE_CHUNK, relay_queries.WRITE_STATUS):
        rendered = in_schema(text, "assets_outbox")
        assert " outbox_events " not in rendered
        assert '"assets_outbox".' in rendered


def test_a_query_renders_once_per_schema() -> None:
    assert INSERT_EVENT.in_schema("outbox") is INSERT_EVENT.in_schema("outbox")
    assert '"outbox".outbox_events' in INSERT_EVENT.in_schema("outbox").asyncpg_sql
    assert "$1" in INSERT_EVENT.in_schema("outbox").asyncpg_sql


@pytest.mark.parametrize("bad", ["", "Outbox", "out box", 'x"; DROP TABLE y; --', "1abc"])
def test_a_schema_that_is_not_a_plain_name_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="schema"):
        quote(bad)
    with pytest.raises(ValueError, match="schema"):
        in_schema("SELECT 1 FROM outbox_events", bad)


def test_table_names_only_outbox_tables() -> None:
    assert table("relay_instances", "public") == '"public".relay_instances'
    with pytest.raises(ValueError, match="not an outbox table"):
        table("users", "public")


def test_relays_of_two_schemas_count_apart_but_public_keeps_its_space() -> None:
    assert presence_lock_space("public") == PRESENCE_LOCK_SPACE
    spaces = {presence_lock_space(s) for s in ("public", "outbox", "identity", "assets")}
    assert len(spaces) == 4
    for space in spaces:
        assert 0 < space < 2**31
        assert space != LEASE_LOCK_SPACE
