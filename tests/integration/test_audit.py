"""The audit log: every administrative action of the CLI and the monitor is recorded, append-only,
with who, through what and how many; ``outbox audit list`` and ``GET /api/audit`` show it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
import redis
from pydantic import SecretStr

from outbox import audit
from outbox.cli.main import main
from outbox.settings import Settings
from outbox.streams.keys import Keys
from tests.fixtures_monitor import MonitorFactory
from tests.fixtures_projections import configure
from tests.integration.test_dlq_cli import letter

ROOT = Path(__file__).resolve().parents[2]


def _rows(database_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        cursor = conn.execute(
            "SELECT actor, via, action, target, counts, details, host FROM outbox_audit ORDER BY id"
        )
        names = [c.name for c in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


async def test_the_audit_log_refuses_update_delete_and_truncate(
    asyncpg_conn: asyncpg.Connection,
) -> None:
    actor = audit.Actor("alice", "cli", "host-1")
    row_id = await audit.record(asyncpg_conn, "prune", actor, counts={"deleted": 3})
    for statement in (
        "UPDATE outbox_audit SET actor = 'mallory'",
        "DELETE FROM outbox_audit",
        "TRUNCATE outbox_audit",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await asyncpg_conn.execute(statement)
    # Not even with ordinary triggers turned off (a superuser's session_replication_role).
    await asyncpg_conn.execute("SET session_replication_role = replica")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await asyncpg_conn.execute("DELETE FROM outbox_audit")
    await asyncpg_conn.execute("RESET session_replication_role")
    (entry,) = await audit.recent(asyncpg_conn)
    assert (entry.id, entry.actor, entry.counts) == (row_id, "alice", {"deleted": 3})
    assert entry.details == {"db_role": "postgres"}


def test_each_command_records_its_action_as_the_os_user(
    settings: Settings,
    database_url: str,
    sync_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LOGNAME", "alice-ops")  # getpass.getuser() reads it first
    configure(monkeypatch, PROJECTION_MODULES="outbox.projections.examples")
    keys = Keys(settings.stream_prefix)
    ids = [letter(sync_redis, keys, "identity", "user_created", n) for n in range(3)]

    assert main(["dlq", "replay", ids[0]]) == 0
    assert main(["dlq", "replay", "--stream", "identity"]) == 1  # not confirmed: not done
    assert main(["dlq", "purge", "--all", "--yes"]) == 0
    assert main(["prune", "--older-than", "7d"]) == 0
    assert main(["partitions", "set", "assets", "4"]) == 0
    assert main(["forget-marks"]) == 0
    assert main(["projections", "prune-inbox"]) == 0
    assert main(["projections", "rebuild", "user_directory", "--yes", "--quiet"]) == 0
    capsys.readouterr()

    rows = _rows(database_url)
    assert {(r["actor"], r["via"]) for r in rows} == {("alice-ops", "cli")}
    assert {r["host"] for r in rows} == {os.uname().nodename}
    done = [(r["action"], r["target"], r["counts"], r["details"].get("stage")) for r in rows]
    assert done == [
        ("dlq.replay", "ids", {"selected": 1, "replayed": 1, "missing": 0}, None),
        ("dlq.purge", "all", {"selected": 2, "purged": 2, "missing": 0}, None),
        ("prune", "outbox_events", {"deleted": 0, "chunks": 0}, "started"),
        ("prune", "outbox_events", {"deleted": 0, "chunks": 0}, "finished"),
        ("partitions.set", "assets", {"partitions": 4}, None),
        ("forget-marks", None, {"services": 0}, None),
        ("projections.prune-inbox", None, {}, "started"),
        ("projections.prune-inbox", None, {"deleted": 0}, "finished"),
        ("projections.rebuild", "user_directory", {"inbox_rows_deleted": 0}, "started"),
        (
            "projections.rebuild",
            "user_directory",
            {"events": 0, "applied": 0, "skipped": 0, "failed": 0},
            "finished",
        ),
    ]
    assert rows[0]["details"]["ids"] == [ids[0]]
    assert all(r["details"]["db_role"] == "postgres" for r in rows)


def test_a_real_process_records_the_os_user_and_grant(
    settings: Settings, database_url: str
) -> None:
    role = f"audit_role_{os.getpid()}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}"')
    env = {**os.environ, "DATABASE_URL": database_url, "LOGNAME": "bob", "USER": "bob"}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "outbox.cli.main", "grant", role, "--service", "identity"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')
    ((row),) = _rows(database_url)
    assert (row["actor"], row["via"], row["action"], row["target"]) == ("bob", "cli", "grant", role)
    assert row["counts"] == {"services": 1}


def test_an_audit_log_that_cannot_be_written_fails_the_command(
    settings: Settings,
    database_url: str,
    sync_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A one-transaction action is undone with its row; a Redis-only one is done, and the
    command says the row is missing (exit 2). With PostgreSQL unreachable, nothing is done."""
    keys = Keys(settings.stream_prefix)
    letter(sync_redis, keys, "identity", "user_created", 1)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON outbox_audit "
            "FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    assert main(["partitions", "set", "assets", "4"]) == 2
    assert "the audit log could not be written" in capsys.readouterr().err
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM stream_partitions").fetchone() == (0,)

    assert main(["dlq", "purge", "--all", "--yes"]) == 2
    captured = capsys.readouterr()
    assert "the audit log could not be written (dlq.purge by" in captured.err
    assert sync_redis.xlen(keys.dead_letter) == 0

    letter(sync_redis, keys, "identity", "user_created", 2)
    configure(monkeypatch, DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere")
    assert main(["dlq", "purge", "--all", "--yes"]) == 2
    assert "so it was not done" in capsys.readouterr().err
    assert sync_redis.xlen(keys.dead_letter) == 1


async def _seed(conn: asyncpg.Connection) -> None:
    cli = audit.Actor("carol", "cli", "h")
    await conn.execute(
        "INSERT INTO outbox_audit (at, actor, via, action) "
        "VALUES (now() - interval '2 days', 'dave', 'cli', 'prune')"
    )
    await audit.record(conn, "dlq.replay", cli, target="all", counts={"replayed": 2})
    await audit.record(conn, "dlq.purge", cli, target="all", counts={"purged": 1})
    await audit.record(conn, "partitions.set", cli, target="assets", counts={"partitions": 2})


async def test_audit_list_shows_the_newest_first_with_filters(
    settings: Settings,
    asyncpg_conn: asyncpg.Connection,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import asyncio

    await _seed(asyncpg_conn)

    async def listed(*argv: str) -> list[dict[str, Any]]:
        assert await asyncio.to_thread(main, ["audit", "list", "--json", *argv]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    assert [e["action"] for e in await listed()] == [
        "partitions.set",
        "dlq.purge",
        "dlq.replay",
        "prune",
    ]
    assert [e["action"] for e in await listed("--action", "dlq")] == ["dlq.purge", "dlq.replay"]
    assert [e["action"] for e in await listed("--action", "dlq.replay")] == ["dlq.replay"]
    assert [e["actor"] for e in await listed("--since", "1d")] == ["carol"] * 3
    assert len(await listed("--limit", "1")) == 1

    assert await asyncio.to_thread(main, ["audit", "list", "--action", "dlq"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2
    assert "cli:carol@h\tdlq.purge\tall\tpurged=1" in lines[0]
    assert "2 audit record(s)" in captured.err


async def test_monitor_actions_are_recorded_under_the_tokens_name(
    monitor_server: MonitorFactory,
    settings: Settings,
    sync_redis: redis.Redis,
    asyncpg_conn: asyncpg.Connection,
    database_url: str,
) -> None:
    keys = Keys(settings.stream_prefix)
    ids = [letter(sync_redis, keys, "identity", "user_created", n) for n in range(3)]
    letter(sync_redis, keys, "assets", "asset_created", 9)
    token = "s3cret-audit-token"
    async with monitor_server(
        monitor_admin_token=SecretStr(token), monitor_admin_token_name="oncall"
    ) as live:
        auth = {"Authorization": f"Bearer {token}"}
        refused = await live.http.post(
            f"/api/dead-letters/{ids[0]}/replay", headers={"Authorization": "Bearer wrong"}
        )
        assert refused.status_code == 401
        missing = await live.http.post("/api/dead-letters/1-1/replay", headers=auth)
        assert missing.status_code == 404
        one = await live.http.post(f"/api/dead-letters/{ids[0]}/replay", headers=auth)
        assert one.status_code == 200, one.text
        filtered = await live.http.post(
            "/api/dead-letters/replay?stream=identity&expected=2", headers=auth
        )
        assert filtered.json() == {"replayed": 2}
        purged = await live.http.post("/api/dead-letters/purge", headers=auth)
        assert purged.json() == {"purged": 1}

        shown = (await live.http.get("/api/audit")).json()["entries"]
        assert [(e["action"], e["target"], e["counts"]) for e in shown] == [
            ("dlq.purge", "all", {"selected": 1, "purged": 1}),
            ("dlq.replay", "filter", {"selected": 2, "replayed": 2}),
            ("dlq.replay", "ids", {"selected": 1, "replayed": 1}),
        ]
        assert {(e["actor"], e["via"], e["host"]) for e in shown} == {
            ("oncall", "monitor", "127.0.0.1")
        }
        assert shown[1]["details"]["filter"] == {"stream": "identity"}
        only = (await live.http.get("/api/audit?action=dlq.purge&limit=5")).json()["entries"]
        assert [e["action"] for e in only] == ["dlq.purge"]
        assert (await live.http.get("/api/audit?limit=0")).status_code == 422

    # Only the three actions done are recorded (not the refused or missing ones), never the token.
    dump = await asyncpg_conn.fetchval("SELECT json_agg(a)::text FROM outbox_audit a")
    assert token not in dump
    assert await asyncpg_conn.fetchval("SELECT count(*) FROM outbox_audit") == 3


def test_a_database_without_the_audit_log_says_to_migrate(
    settings: Settings, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database migrated before 0008: the command refuses (nothing changed) and says why."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE outbox_audit")
    assert main(["partitions", "set", "assets", "4"]) == 2
    assert "run `outbox migrate`" in capsys.readouterr().err
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM stream_partitions").fetchone() == (0,)


def test_a_replay_that_fails_half_way_records_what_it_did(
    settings: Settings,
    database_url: str,
    sync_redis: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = Keys(settings.stream_prefix)
    letter(sync_redis, keys, "identity", "user_created", 1)
    letter(sync_redis, keys, "assets", "asset_created", 2)
    sync_redis.set(keys.stream("assets"), "not a stream")  # its XADD fails: WRONGTYPE

    assert main(["dlq", "replay", "--all", "--yes"]) == 2
    assert "is not a stream (WRONGTYPE)" in capsys.readouterr().err
    ((row),) = _rows(database_url)
    assert row["action"] == "dlq.replay"
    assert row["counts"] == {"selected": 2, "replayed": 1, "missing": 0}
    assert row["details"]["error"].startswith("WrongTypeError: ")
    assert sync_redis.xlen(keys.stream("identity")) == 1
