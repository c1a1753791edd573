"""Encrypted event fields through the real pipeline: stored and relayed as ciphertext, opened by
projections and the client that hold the key; wrong, missing and tampered keys dead-lettered
as stored and readable again once fixed; rotation (`outbox keys rotate`, audited) beside a live
relay; the monitor shows no plaintext; consumers of unencrypted events see no change."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

import outbox
from outbox import EventSpec
from outbox.cli.main import main
from outbox.keyring import StaticKeyProvider, reset_key_provider
from outbox.projections.projection import Projection
from outbox.projections.rebuild import rebuild
from outbox.projections.runner import ProjectionsProbe
from outbox.projections.store import fields_from_row
from outbox.relay.admin import request_partitions
from outbox.settings import Settings, get_settings
from outbox.streams import RedisStreamsClient
from outbox.streams.codec import StreamMessage
from outbox.streams.dead_letter import DeadLetters, dead_letter_fields
from outbox.streams.keys import Keys
from tests.fixtures_monitor import MonitorFactory
from tests.fixtures_projections import Runner, async_eq, emit_events, poll
from tests.fixtures_relay import StartRelay

SECRET = "hunter2-"


def _key() -> bytes:
    return os.urandom(32)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _asset(n: int, correlation_id: str | None = None) -> EventSpec:
    return EventSpec(
        "assets",
        "asset_created",
        {"asset_id": f"a{n}", "credentials": {"user": "root", "password": f"{SECRET}{n}"}},
        aggregate_id=f"a{n}",
        correlation_id=correlation_id,
    )


@pytest.fixture
async def vault(asyncpg_conn: asyncpg.Connection) -> Projection:
    """A read model that stores the opened password (a second apply would fail: the key)."""
    await asyncpg_conn.execute(
        "CREATE TABLE enc_assets (asset_id text PRIMARY KEY, password text NOT NULL)"
    )
    projection = Projection("enc_assets", streams=["assets"], tables=["enc_assets"])

    @projection.on("asset_created")
    async def created(message: StreamMessage, db: Any) -> None:
        await db.execute(
            "INSERT INTO enc_assets VALUES ($1, $2)",
            message.data["asset_id"],
            message.data["credentials"]["password"],
        )

    return projection


async def _vault(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    rows = await conn.fetch("SELECT asset_id, password FROM enc_assets ORDER BY asset_id")
    return [(r["asset_id"], r["password"]) for r in rows]


def _expected(numbers: range) -> list[tuple[str, str]]:
    return sorted((f"a{n}", f"{SECRET}{n}") for n in numbers)


async def _stored_payloads(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT payload::text FROM outbox_events ORDER BY position")
    return [row["payload"] for row in rows]


async def test_round_trip_ciphertext_in_postgresql_and_redis_plaintext_in_the_projection(
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    projection_settings: Settings,
    start_relay: StartRelay,
    running: Runner,
    vault: Projection,
) -> None:
    outbox.use_key_provider(StaticKeyProvider([("k1", _key())]))
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    events = await emit_events(database_url, [_asset(n) for n in range(20)])
    assert events[0].data["credentials"]["password"] == f"{SECRET}0"  # the caller's own data
    stored = await _stored_payloads(asyncpg_conn)
    assert len(stored) == 20
    assert not any(SECRET in text for text in stored)
    first = json.loads(stored[0])
    assert first["credentials"]["user"] == "root"
    assert first["credentials"]["password"]["$enc"] == 1
    assert first["credentials"]["password"]["kid"] == "k1"
    headers = await asyncpg_conn.fetchval("SELECT headers::text FROM outbox_events LIMIT 1")
    assert json.loads(headers) == {"encrypted": "credentials.password"}
    async with start_relay(), running([vault], projection_settings):
        await poll(lambda: async_eq(_vault(asyncpg_conn), _expected(range(20))))
        entries = await redis_client.xrange(keys.stream("assets"))
    assert len(entries) == 20
    assert not any(SECRET.encode() in value for _, f in entries for value in f.values())
    assert await redis_client.xlen(keys.dead_letter) == 0


async def test_whole_data_encryption_and_an_unencrypted_consumer_unaffected(
    database_url: str, asyncpg_conn: asyncpg.Connection, keys: Keys, vault: Projection
) -> None:
    outbox.use_key_provider(StaticKeyProvider([("k1", _key())]))
    outbox.encrypt_fields("asset_created", "*", service="assets")
    plain = EventSpec("identity", "user_created", {"user_id": "u1", "password": "visible"})
    await emit_events(database_url, [_asset(1), plain, _asset(2)])
    stored = await _stored_payloads(asyncpg_conn)
    assert json.loads(stored[0]).keys() == {"$enc", "kid", "wk", "iv", "ct"}
    assert '"a1"' not in stored[0]  # as JSON text: base64 of the ciphertext may hold a1
    assert json.loads(stored[1]) == {"user_id": "u1", "password": "visible"}
    seen: list[dict[str, Any]] = []
    users = Projection("enc_users", streams=["identity"])

    @users.on("user_created")
    async def created(message: StreamMessage, db: Any) -> None:
        seen.append({"data": message.data, "headers": message.headers})

    db = await asyncpg.connect(database_url)
    try:
        assert (await rebuild(db, vault, keys)).applied == 2
        assert (await rebuild(db, users, keys)).applied == 1
    finally:
        await db.close()
    assert await _vault(asyncpg_conn) == _expected(range(1, 3))
    assert seen == [{"data": {"user_id": "u1", "password": "visible"}, "headers": {}}]


async def test_emit_without_a_key_raises_before_anything_is_written(
    asyncpg_conn: asyncpg.Connection,
) -> None:
    outbox.use_key_provider(None)
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    async with asyncpg_conn.transaction():
        with pytest.raises(outbox.KeyNotConfiguredError, match="no encryption key"):
            await outbox.emit(
                asyncpg_conn,
                service="assets",
                event_type="asset_created",
                data=_asset(1).data,
            )
        # The transaction is still usable, and nothing is in it.
        assert await asyncpg_conn.fetchval("SELECT count(*) FROM outbox_events") == 0


async def _tamper(conn: asyncpg.Connection, position_rank: int) -> None:
    """Flip one bit of one stored ciphertext (what an attacker with the database could do)."""
    row = await conn.fetchrow(
        "SELECT position, payload::text FROM outbox_events ORDER BY position OFFSET $1 LIMIT 1",
        position_rank,
    )
    data = json.loads(row["payload"])
    raw = bytearray(base64.b64decode(data["credentials"]["password"]["ct"]))
    raw[0] ^= 1
    data["credentials"]["password"]["ct"] = _b64(bytes(raw))
    await conn.execute(
        "UPDATE outbox_events SET payload = $1::jsonb WHERE position = $2",
        json.dumps(data),
        row["position"],
    )


async def test_wrong_missing_or_tampered_keys_are_dead_lettered_at_once_and_nothing_is_lost(
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    settings: Settings,
    projection_settings: Settings,
    start_relay: StartRelay,
    running: Runner,
    vault: Projection,
) -> None:
    k1, k2 = _key(), _key()
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    outbox.use_key_provider(StaticKeyProvider([("k1", k1)]))
    await emit_events(database_url, [_asset(n) for n in range(0, 3)])
    outbox.use_key_provider(StaticKeyProvider([("k2", k2)]))
    await emit_events(database_url, [_asset(n) for n in range(3, 6)])
    await _tamper(asyncpg_conn, 5)
    # The consumer has another key under id k1 (wrong), no k2 (missing); event 5 is tampered.
    outbox.use_key_provider(StaticKeyProvider([("k1", _key())]))
    probe = ProjectionsProbe.for_settings(projection_settings)
    async with start_relay(), running([vault], projection_settings, probe=probe):
        await poll(lambda: async_eq(redis_client.xlen(keys.dead_letter), 6))
    counted = probe.registry.get_sample_value(
        "projection_dead_letters_total", {"projection": "enc_assets", "reason": "decrypt_failed"}
    )
    assert counted == 6
    dead = await redis_client.xrange(keys.dead_letter)
    errors = sorted(f[b"error"].decode() for _, f in dead)
    assert all(e.startswith("DecryptError: assets/asset_created event ") for e in errors)
    assert sum("does not open with key 'k1'" in e for e in errors) == 3
    assert sum("'k2', which this process does not have" in e for e in errors) == 3
    assert all(f[b"attempts"] == b"1" for _, f in dead)  # at once, not retried
    # Kept as stored: still encrypted, nothing in clear.
    assert not any(SECRET.encode() in value for _, f in dead for value in f.values())
    payloads = [json.loads(f[b"payload"]) for _, f in dead]
    assert all(json.loads(p["headers"]) == {"encrypted": "credentials.password"} for p in payloads)
    assert await _vault(asyncpg_conn) == []

    # The right keys are deployed: the replayed dead letters are applied, but the tampered one,
    # which goes back to the dead letters with its reason. Nothing was lost.
    outbox.use_key_provider(StaticKeyProvider([("k2", k2), ("k1", k1)]))
    async with running([vault], projection_settings):
        assert await asyncio.to_thread(main, ["dlq", "replay", "--stream", "assets", "--yes"]) == 0
        await poll(lambda: async_eq(_vault(asyncpg_conn), _expected(range(5))))
        await poll(lambda: async_eq(redis_client.xlen(keys.dead_letter), 1))
    ((_, letter),) = await redis_client.xrange(keys.dead_letter)
    assert b"the ciphertext does not open: it was altered or moved" in letter[b"error"]


async def test_the_client_opens_what_it_has_the_key_for_and_dead_letters_the_rest(
    settings: Settings, redis_client: aioredis.Redis, keys: Keys
) -> None:
    outbox.use_key_provider(StaticKeyProvider([("k1", _key())]))
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    client = RedisStreamsClient(
        settings.redis_streams_url.get_secret_value(), prefix=settings.stream_prefix
    )
    await client.initialize()
    try:
        await client.publish_message("assets", "asset_created", "assets", _asset(1).data)
        ((_, fields),) = await redis_client.xrange(keys.stream("assets"))
        assert SECRET.encode() not in fields[b"data"]
        messages = await client.consume_messages(["assets"], "c1", block_time=0)
        assert [m.data["credentials"]["password"] for m in messages] == [f"{SECRET}1"]
        await client.publish_message("assets", "asset_created", "assets", _asset(2).data)
        outbox.use_key_provider(StaticKeyProvider([("k9", _key())]))
        assert await client.consume_messages(["assets"], "c1", block_time=0) == []
        ((_, letter),) = await redis_client.xrange(keys.dead_letter)
        assert b"DecryptError:" in letter[b"error"]
        assert SECRET.encode() not in letter[b"payload"]
    finally:
        await client.close()


async def test_rotation_beside_a_live_relay_rewraps_the_log_and_is_audited(
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    settings: Settings,
    projection_settings: Settings,
    start_relay: StartRelay,
    running: Runner,
    vault: Projection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k1, k2 = _b64(_key()), _b64(_key())

    def keys_env(value: str) -> None:
        monkeypatch.setenv("OUTBOX_ENCRYPTION_KEYS", value)
        get_settings.cache_clear()
        outbox.configure()  # emit() and the key provider read the environment again
        reset_key_provider()

    keys_env(f"k1:{k1}")
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    await emit_events(database_url, [_asset(n) for n in range(300)])
    async with start_relay(), running([vault], projection_settings):
        # A new key is added and made active: new events use it, old ones still open.
        keys_env(f"k2:{k2},k1:{k1}")
        await emit_events(database_url, [_asset(n) for n in range(300, 310)])
        assert await asyncio.to_thread(main, ["keys", "rotate", "--batch-size", "50"]) == 0
        await emit_events(database_url, [_asset(n) for n in range(310, 320)])
        await poll(lambda: async_eq(_vault(asyncpg_conn), _expected(range(320))))
    assert await redis_client.xlen(keys.dead_letter) == 0
    kids = await asyncpg_conn.fetch(
        "SELECT payload #>> '{credentials,password,kid}' AS kid, count(*) FROM outbox_events "
        "GROUP BY 1"
    )
    assert {row["kid"]: row["count"] for row in kids} == {"k2": 320}
    audit = await asyncpg_conn.fetch(
        "SELECT action, target, counts, details FROM outbox_audit ORDER BY id"
    )
    assert [(r["action"], json.loads(r["details"])["stage"]) for r in audit] == [
        ("keys.rotate", "started"),
        ("keys.rotate", "finished"),
    ]
    counts = json.loads(audit[1]["counts"])
    assert audit[1]["target"] == "key k2"
    assert counts["rows_scanned"] == counts["rows_rewrapped"] + 10 >= 310
    assert counts["values_rewrapped"] == counts["rows_rewrapped"]
    assert counts["rows_unreadable"] == 0
    # The log needs k1 no more: a rebuild with k2 alone reads all of it. Running the rotation
    # again (a resume) finds nothing to do.
    keys_env(f"k2:{k2}")
    assert await asyncio.to_thread(main, ["keys", "rotate"]) == 0
    assert await asyncio.to_thread(main, ["keys", "status"]) == 0
    db = await asyncpg.connect(database_url)
    try:
        assert (await rebuild(db, vault, keys)).applied == 320
    finally:
        await db.close()


async def test_rotation_without_the_old_key_leaves_those_rows_and_says_so(
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    k1 = _b64(_key())
    monkeypatch.setenv("OUTBOX_ENCRYPTION_KEYS", f"k1:{k1}")
    outbox.configure()
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    await emit_events(database_url, [_asset(n) for n in range(3)])
    before = await _stored_payloads(asyncpg_conn)
    monkeypatch.setenv("OUTBOX_ENCRYPTION_KEYS", f"k2:{_b64(_key())}")
    get_settings.cache_clear()
    assert await asyncio.to_thread(main, ["keys", "rotate"]) == 1
    assert "3 events could not be re-wrapped" in capsys.readouterr().err
    assert await _stored_payloads(asyncpg_conn) == before
    assert await asyncio.to_thread(main, ["keys", "status"]) == 1
    assert "k1\t3 value(s) in 3 event(s)\tNOT CONFIGURED" in capsys.readouterr().out
    assert k1 not in capsys.readouterr().out


async def test_the_monitor_shows_no_plaintext_of_encrypted_fields(
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    monitor_server: MonitorFactory,
) -> None:
    outbox.use_key_provider(StaticKeyProvider([("k1", _key())]))
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    await emit_events(database_url, [_asset(1, correlation_id="corr-enc")])
    outbox.use_key_provider(None)
    # A dead letter of it, as a consumer without the key writes it.
    letters = DeadLetters(redis_client, keys, 3600)
    row = await asyncpg_conn.fetchrow("SELECT * FROM outbox_events")
    await letters.add(
        dead_letter_fields(
            source_stream=keys.stream("assets"),
            group="enc_assets",
            entry_id="1-1",
            attempts=1,
            error="DecryptError: ...",
            payload=fields_from_row(row),
            consumer="c",
        )
    )
    # "password" is not among the masked names here: the marker comes from the encryption.
    async with monitor_server(monitor_mask_fields="email") as live:
        trace = (await live.http.get("/api/events", params={"correlation_id": "corr-enc"})).json()
        (event,) = trace["events"]
        assert event["data"]["credentials"] == {"user": "root", "password": "[encrypted]"}
        listing = (await live.http.get("/api/dead-letters")).json()
        (letter,) = listing["dead_letters"]
        assert letter["data"]["credentials"]["password"] == "[encrypted]"
        shown = json.dumps(trace) + json.dumps(listing)
    assert SECRET not in shown
    assert '"ct"' not in shown


async def test_forgetting_a_subject_shreds_its_events_only_and_is_audited(
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    settings: Settings,
    vault: Projection,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    (tmp_path / "k1.key").write_text(_b64(_key()))
    monkeypatch.setenv("OUTBOX_ENCRYPTION_KEY_FILE", str(tmp_path))
    get_settings.cache_clear()
    outbox.configure()
    outbox.encrypt_fields("asset_created", ["credentials.password"], per_subject=True)
    await emit_events(database_url, [_asset(n) for n in range(4)])
    assert len(list((tmp_path / "subjects").iterdir())) == 4
    assert await asyncio.to_thread(main, ["keys", "forget-subject", "a2"]) == 0
    db = await asyncpg.connect(database_url)
    try:
        result = await rebuild(db, vault, keys, letters=DeadLetters(redis_client, keys, 3600))
    finally:
        await db.close()
    assert (result.applied, result.failed) == (3, 1)
    assert await _vault(asyncpg_conn) == _expected(range(4))[:2] + _expected(range(4))[3:]
    ((_, letter),) = await redis_client.xrange(keys.dead_letter)
    assert b"a subject key: forgotten" in letter[b"error"]
    (audit,) = await asyncpg_conn.fetch("SELECT action, target, counts FROM outbox_audit")
    assert audit["action"] == "keys.forget-subject"
    assert audit["target"].startswith("subject.")
    assert "a2" not in audit["target"]
    assert json.loads(audit["counts"]) == {"keys_deleted": 1}


async def test_partitioned_consumers_open_fields_and_dead_letter_a_missing_key_at_once(
    database_url: str,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    keys: Keys,
    projection_settings: Settings,
    start_relay: StartRelay,
    running: Runner,
    vault: Projection,
) -> None:
    await request_partitions(database_url, "assets", 2)
    k1 = _key()
    outbox.encrypt_fields("asset_created", ["credentials.password"])
    outbox.use_key_provider(StaticKeyProvider([("k1", k1)]))
    await emit_events(database_url, [_asset(n) for n in range(8)])
    outbox.use_key_provider(StaticKeyProvider([("k2", _key())]))
    await emit_events(database_url, [_asset(n) for n in range(8, 11)])
    outbox.use_key_provider(StaticKeyProvider([("k1", k1)]))  # the consumers lack k2
    probe = ProjectionsProbe.for_settings(projection_settings)
    async with start_relay(), running([vault], projection_settings, probe=probe):
        await poll(lambda: async_eq(_vault(asyncpg_conn), _expected(range(8))))
        await poll(lambda: async_eq(redis_client.xlen(keys.dead_letter), 3))
    assert await redis_client.xlen(keys.stream("assets")) == 0  # all on the partitions' streams
    dead = await redis_client.xrange(keys.dead_letter)
    assert all(b"'k2', which this process does not have" in f[b"error"] for _, f in dead)
    assert not any(SECRET.encode() in value for _, f in dead for value in f.values())
    counted = probe.registry.get_sample_value(
        "projection_dead_letters_total", {"projection": "enc_assets", "reason": "decrypt_failed"}
    )
    assert counted == 3
