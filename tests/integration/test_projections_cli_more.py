"""More of ``outbox projections …`` and ``outbox dlq …``: inbox pruning (runner and CLI),
``projections rebuild`` as a real process, replaying one dead letter by id, list filters."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from outbox import EventSpec
from outbox.cli.main import main
from outbox.projections.examples import user_directory
from outbox.projections.projection import Projection
from outbox.projections.store import prune_inbox
from outbox.settings import Settings
from outbox.streams.codec import StreamMessage
from outbox.streams.dead_letter import DeadLetters, dead_letter_fields
from outbox.streams.keys import Keys
from tests.fixtures_projections import (
    Runner,
    configure,
    directory,
    emit_events,
    group_settled,
    poll,
    xadd_events,
)
from tests.integration.test_projections_runtime import _fold_users

ROOT = Path(__file__).resolve().parents[2]
RETENTION_S = 3600


async def _cli(*argv: str) -> int:
    """``outbox ARGV`` in this process, as test_dlq_cli.py runs it (``main`` runs its own event
    loop, so it goes to a thread while this test's loop keeps running)."""
    return await asyncio.to_thread(main, list(argv))


# --- inbox retention ---


async def _add_inbox_rows(
    conn: asyncpg.Connection, projection: str, count: int, age: timedelta
) -> None:
    """``count`` inbox rows of ``projection`` applied ``age`` ago."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO projection_inbox (projection, event_id) "
            "SELECT $1, gen_random_uuid() FROM generate_series(1, $2)",
            projection,
            count,
        )
        # now() is this transaction's start, so this ages only the rows just inserted.
        await conn.execute(
            "UPDATE projection_inbox SET applied_at = now() - CAST($2 AS interval) "
            "WHERE projection = $1 AND applied_at = now()",
            projection,
            age,
        )


async def _inbox_ages(conn: asyncpg.Connection) -> dict[tuple[str, bool], int]:
    """Inbox row counts per (projection, older than RETENTION_S)."""
    rows = await conn.fetch(
        "SELECT projection, applied_at < now() - make_interval(secs => $1) AS old, count(*) "
        "FROM projection_inbox GROUP BY 1, 2",
        float(RETENTION_S),
    )
    return {(row["projection"], row["old"]): int(row["count"]) for row in rows}


async def _seed_inbox(conn: asyncpg.Connection, old: int) -> None:
    """``old`` rows past retention (split over two projections) and 500 within it."""
    await _add_inbox_rows(conn, "user_directory", old - old // 3, timedelta(hours=2))
    await _add_inbox_rows(conn, "asset_inventory", old // 3, timedelta(days=30))
    # Just inside retention, and fresh.
    await _add_inbox_rows(conn, "user_directory", 200, timedelta(minutes=59))
    await _add_inbox_rows(conn, "asset_inventory", 300, timedelta(seconds=1))


_YOUNG = {("user_directory", False): 200, ("asset_inventory", False): 300}


async def test_prune_inbox_deletes_rows_past_retention_in_chunks(
    settings: Settings, asyncpg_conn: asyncpg.Connection
) -> None:
    await _seed_inbox(asyncpg_conn, 3000)
    assert sum((await _inbox_ages(asyncpg_conn)).values()) == 3500

    # 3 full chunks of 1,000, then an empty one ends the loop.
    assert await prune_inbox(asyncpg_conn, RETENTION_S, limit=1000) == 3000
    assert await _inbox_ages(asyncpg_conn) == _YOUNG
    assert await prune_inbox(asyncpg_conn, RETENTION_S, limit=1000) == 0
    assert await _inbox_ages(asyncpg_conn) == _YOUNG


async def test_running_projections_prune_the_inbox_with_inbox_retention(
    projection_settings: Settings,
    asyncpg_conn: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    running: Runner,
) -> None:
    run_settings = configure(monkeypatch, INBOX_RETENTION=str(RETENTION_S))
    assert run_settings.inbox_retention_s == RETENTION_S
    # More than one chunk of store.prune_inbox's default 10,000.
    await _seed_inbox(asyncpg_conn, 12_345)
    caplog.set_level(logging.INFO, logger="outbox.projections.runner")

    async def old_rows_gone() -> bool:
        ages = await _inbox_ages(asyncpg_conn)
        return not any(old for (_, old) in ages)

    async with running([user_directory], run_settings):
        await poll(old_rows_gone)
    assert await _inbox_ages(asyncpg_conn) == _YOUNG
    pruned = [r.getMessage() for r in caplog.records if "event=inbox_pruned" in r.getMessage()]
    assert pruned == ["event=inbox_pruned rows=12345"]


async def test_prune_inbox_command(
    settings: Settings,
    asyncpg_conn: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure(monkeypatch, INBOX_RETENTION=str(RETENTION_S))
    await _seed_inbox(asyncpg_conn, 25_000)  # three chunks of the command's 10,000

    assert await _cli("projections", "prune-inbox") == 0
    assert capsys.readouterr().out == f"pruned 25000 inbox rows older than {RETENTION_S} s\n"
    assert await _inbox_ages(asyncpg_conn) == _YOUNG

    assert await _cli("projections", "prune-inbox") == 0
    assert capsys.readouterr().out == f"pruned 0 inbox rows older than {RETENTION_S} s\n"
    assert await _inbox_ages(asyncpg_conn) == _YOUNG


# --- outbox projections rebuild NAME ---


def _identity_specs(count: int) -> list[EventSpec]:
    """Users created, updated, deleted and re-created, plus a type user_directory ignores."""
    specs = []
    for i in range(count):
        user = f"u{i % 97}"
        kind = ("user_created", "user_updated", "user_deleted", "user_updated", "user_seen")[i % 5]
        data = {"user_id": user, "email": f"{user}-{i}@example.com", "name": f"n{i}"}
        specs.append(EventSpec("identity", kind, data, aggregate_id=user))
    return specs


async def _inbox_ids(conn: asyncpg.Connection, projection: str) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT event_id FROM projection_inbox WHERE projection = $1 ORDER BY event_id", projection
    )
    return [row["event_id"] for row in rows]


def _run_cli(settings: Settings, database_url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """``outbox ARGV`` as a separate process, stdin not a terminal."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        REDIS_STREAMS_URL=settings.redis_streams_url.get_secret_value(),
        STREAM_PREFIX=settings.stream_prefix,
        PROJECTION_MODULES="outbox.projections.examples",
    )
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli.main", *argv],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_rebuild_command_resets_and_replays_with_progress(
    settings: Settings, database_url: str, asyncpg_conn: asyncpg.Connection
) -> None:
    # 2,500 identity events: two replay batches of 2,000 and 500.
    identity = await emit_events(database_url, _identity_specs(2500))
    assets = await emit_events(
        database_url,
        [EventSpec("assets", "asset_created", {"asset_id": f"a{i}"}) for i in range(40)],
    )
    expected = _fold_users(identity)
    ignored = sum(1 for event in identity if event.event_type == "user_seen")
    # A stale read model: a user no event made, and a wrong email whose version is newer than
    # any event (an upsert over it without the reset would leave it). The inbox claims every
    # event was applied (a replay that kept it would skip them all) and one unknown event.
    await asyncpg_conn.execute(
        "INSERT INTO directory_users (user_id, email, version) VALUES "
        "('ghost', 'ghost@example.com', 1), ('u1', 'stale@example.com', 1000000000000)"
    )
    await asyncpg_conn.execute(
        "INSERT INTO projection_inbox (projection, event_id) "
        "SELECT 'user_directory', unnest(CAST($1 AS uuid[])) UNION ALL "
        "SELECT 'user_directory', gen_random_uuid()",
        [event.event_id for event in identity],
    )
    # Another projection's inbox and read model are not this rebuild's to touch.
    await asyncpg_conn.execute(
        "INSERT INTO projection_inbox (projection, event_id) "
        "SELECT 'asset_inventory', unnest(CAST($1 AS uuid[]))",
        [event.event_id for event in assets],
    )
    await asyncpg_conn.execute(
        "INSERT INTO inventory_assets (asset_id, hostname, version) VALUES ('a0', 'h', 1)"
    )
    stale = await directory(asyncpg_conn)
    assert stale != expected

    # Without --yes and with no terminal to ask on, it refuses and changes nothing.
    refused = await asyncio.to_thread(
        _run_cli, settings, database_url, "projections", "rebuild", "user_directory"
    )
    assert refused.returncode == 2, refused.stderr
    assert "pass --yes to confirm" in refused.stderr
    assert "rebuilt" not in refused.stdout
    assert await directory(asyncpg_conn) == stale
    assert len(await _inbox_ids(asyncpg_conn, "user_directory")) == 2501

    done = await asyncio.to_thread(
        _run_cli, settings, database_url, "projections", "rebuild", "user_directory", "--yes"
    )
    assert done.returncode == 0, done.stderr
    assert (
        f"rebuilt user_directory: 2500 events replayed, {2500 - ignored} applied, {ignored} "
        f"skipped, 0 failed (dead-lettered), through outbox position {identity[-1].position}"
    ) in done.stdout
    assert "2500/2500 events" in done.stderr  # the progress bar's last state

    assert await directory(asyncpg_conn) == expected
    # Each replayed event once (ignored types too: they were handled), nothing else.
    assert await _inbox_ids(asyncpg_conn, "user_directory") == sorted(e.event_id for e in identity)
    assert await _inbox_ids(asyncpg_conn, "asset_inventory") == sorted(e.event_id for e in assets)
    assert await asyncpg_conn.fetchval("SELECT count(*) FROM inventory_assets") == 1
    checkpoint = await asyncpg_conn.fetchrow(
        "SELECT status, events_replayed, rebuilt_through_position FROM projection_checkpoints "
        "WHERE projection = 'user_directory'"
    )
    assert checkpoint is not None
    assert tuple(checkpoint) == ("live", 2500, identity[-1].position)

    # Rebuilding again reproduces the same model; --quiet leaves the progress bar out.
    quiet = await asyncio.to_thread(
        _run_cli,
        settings,
        database_url,
        "projections",
        "rebuild",
        "user_directory",
        "--yes",
        "--quiet",
    )
    assert quiet.returncode == 0, quiet.stderr
    assert "2500 events replayed" in quiet.stdout
    assert "/2500 events" not in quiet.stderr
    assert await directory(asyncpg_conn) == expected
    assert len(await _inbox_ids(asyncpg_conn, "user_directory")) == 2500


# --- outbox dlq replay ID, dlq list filters ---


async def test_replaying_one_dead_letter_by_id_redelivers_only_that_one(
    projection_settings: Settings,
    asyncpg_conn: asyncpg.Connection,
    database_url: str,
    redis_client: aioredis.Redis,
    keys: Keys,
    running: Runner,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await asyncpg_conn.execute("CREATE TABLE test_applied (user_id text, event_id uuid)")
    projection = Projection("dlq_cli", streams=["identity"])
    failing = {"on": True}

    @projection.on("user_created")
    async def created(event: StreamMessage, db: Any) -> None:
        if failing["on"]:
            raise RuntimeError(f"handler bug {event.data['user_id']}")
        await db.execute(
            "INSERT INTO test_applied VALUES ($1, $2)", event.data["user_id"], event.event_id
        )

    events = await emit_events(
        database_url,
        [EventSpec("identity", "user_created", {"user_id": user}) for user in ("ua", "ub")],
    )
    await xadd_events(redis_client, keys, events)
    source = keys.stream("identity")
    letters = DeadLetters(redis_client, keys, 3600)

    async def two_letters() -> bool:
        return await letters.count() == 2

    async def applied() -> list[tuple[str, uuid.UUID]]:
        rows = await asyncpg_conn.fetch("SELECT user_id, event_id FROM test_applied")
        return [(row["user_id"], row["event_id"]) for row in rows]

    async with running([projection], projection_settings):
        # Both fail past MAX_RETRIES and are dead-lettered for real by the worker.
        await poll(two_letters)
        await poll(lambda: group_settled(redis_client, source, "dlq_cli"))
        failing["on"] = False  # the bug is fixed
        by_event = {letter.event_id: letter for letter in await letters.select()}
        first, second = (by_event[str(event.event_id)] for event in events)
        assert first.group == second.group == "dlq_cli"
        capsys.readouterr()

        # One id needs no --yes.
        assert await _cli("dlq", "replay", first.id) == 0
        out, err = capsys.readouterr()
        assert "1 dead letter(s) to replay" in err
        assert out == "replayed 1 dead letter(s) to their source streams\n"

        await poll(applied)
        await poll(lambda: group_settled(redis_client, source, "dlq_cli"))

    assert await applied() == [("ua", events[0].event_id)]
    assert await _inbox_ids(asyncpg_conn, "dlq_cli") == [events[0].event_id]
    # The other one is still a dead letter, untouched; the source stream got one copy.
    assert [letter.id for letter in await letters.select()] == [second.id]
    entries: Any = await redis_client.xrange(source)
    assert [fields[b"event_id"].decode() for _, fields in entries] == [
        str(events[0].event_id),
        str(events[1].event_id),
        str(events[0].event_id),
    ]

    # The replayed id is gone: replaying it again adds nothing, says so and exits 1.
    assert await _cli("dlq", "replay", first.id) == 1
    out, err = capsys.readouterr()
    assert "1 of the given ids are not dead letters" in err
    assert out == "replayed 0 dead letter(s) to their source streams\n"
    assert await redis_client.xlen(source) == 3
    assert await letters.count() == 1


async def _add_letter(
    redis: aioredis.Redis, keys: Keys, service: str, group: str, event_type: str
) -> str:
    payload = {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "service": service,
        "data": "{}",
        "priority": "normal",
        "correlation_id": "c",
    }
    fields: dict[Any, Any] = dead_letter_fields(
        source_stream=keys.stream(service),
        group=group,
        entry_id="1-1",
        attempts=4,
        error=f"{group} failed",
        payload=payload,
        consumer="w-0",
    )
    entry_id: Any = await redis.xadd(keys.dead_letter, fields)
    return str(entry_id.decode())


async def test_dlq_list_filters_by_group_and_event_type(
    settings: Settings,
    redis_client: aioredis.Redis,
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    letters = [
        ("identity", "user_directory", "user_created"),
        ("identity", "user_directory", "user_deleted"),
        ("identity", "user_directory_v2", "user_created"),  # a group whose name extends another
        ("assets", "asset_inventory", "asset_created"),
        ("identity", "audit", "user_created"),
        ("identity", "user_directory", "user_created_v2"),  # a type whose name extends another
    ]
    ids = [await _add_letter(redis_client, keys, *letter) for letter in letters]

    async def listed(*filters: str) -> list[str]:
        assert await _cli("dlq", "list", "--json", *filters) == 0
        out, err = capsys.readouterr()
        found = [json.loads(line) for line in out.splitlines()]
        assert err.endswith(f"{len(found)} dead letter(s)\n")
        return [item["id"] for item in found]

    assert await listed() == ids
    assert await listed("--group", "user_directory") == [ids[0], ids[1], ids[5]]
    assert await listed("--event-type", "user_created") == [ids[0], ids[2], ids[4]]
    assert await listed("--group", "user_directory", "--event-type", "user_created") == [ids[0]]
    assert await listed("--group", "asset_inventory", "--event-type", "user_created") == []
    assert await listed("--group", "nobody") == []

    # The table output shows the same selection with its group and type.
    assert await _cli("dlq", "list", "--group", "asset_inventory") == 0
    out, err = capsys.readouterr()
    (line,) = out.splitlines()
    assert line.split("\t")[:4] == [
        ids[3],
        keys.stream("assets"),
        "asset_inventory",
        "asset_created",
    ]
    assert err == "1 dead letter(s)\n"
