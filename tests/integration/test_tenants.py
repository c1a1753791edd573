"""Tenants end to end: emit, the relay's tenant streams, tenant clients and projections.

The ACL side (a tenant's Redis user refused every other key) is in test_tenant_acl.py; the
monitor's in test_monitor_tenants.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis

import outbox
from outbox import MessagePriority
from outbox.cli.main import main
from outbox.errors import ConfigurationError, DedupKeyOfAnotherTenantError, InvalidNameError
from outbox.projections.projection import Projection
from outbox.projections.rebuild import rebuild
from outbox.projections.tenants import TenantView
from outbox.relay.cursor import Cursor
from outbox.settings import Settings
from outbox.streams.client import RedisStreamsClient
from outbox.streams.codec import StreamMessage
from outbox.streams.dead_letter import DeadLetters
from outbox.streams.keys import Keys
from tests.fixtures_projections import Runner, configure, poll
from tests.fixtures_relay import StartRelay, cursor_order_ok, wait_until
from tests.integration.test_dlq_cli import letter


async def _emit(
    conn: asyncpg.Connection,
    service: str,
    count: int,
    tenant: str | None,
    *,
    priority: MessagePriority = MessagePriority.NORMAL,
) -> list[str]:
    specs = [
        outbox.EventSpec(
            service=service,
            event_type="asset_created",
            data={"n": i},
            priority=priority,
            aggregate_id=f"a-{i % 3}",
            tenant_id=tenant,
        )
        for i in range(count)
    ]
    async with conn.transaction():
        events = await outbox.emit_many(conn, specs)
    assert {e.tenant_id for e in events} == {tenant}
    return [str(e.event_id) for e in events]


async def _entries(client: aioredis.Redis, stream: str) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in await client.xrange(stream)
    ]


async def _ids(client: aioredis.Redis, streams: Sequence[str]) -> list[str]:
    return [e["event_id"] for stream in streams for e in await _entries(client, stream)]


async def test_emit_takes_the_tenant_from_the_argument_or_the_scope(
    asyncpg_conn: asyncpg.Connection, settings: Settings
) -> None:
    async with asyncpg_conn.transaction():
        given = await outbox.emit(
            asyncpg_conn, service="assets", event_type="asset_created", data={}, tenant_id="acme"
        )
        with outbox.tenant_scope("globex"):
            scoped = await outbox.emit(
                asyncpg_conn, service="assets", event_type="asset_created", data={}
            )
            overridden = await outbox.emit(
                asyncpg_conn,
                service="assets",
                event_type="asset_created",
                data={},
                tenant_id="acme",
            )
        none = await outbox.emit(
            asyncpg_conn, service="assets", event_type="asset_created", data={}
        )
    assert (given.tenant_id, scoped.tenant_id, overridden.tenant_id, none.tenant_id) == (
        "acme",
        "globex",
        "acme",
        None,
    )
    rows = await asyncpg_conn.fetch(
        "SELECT event_id, tenant_id FROM outbox_events WHERE event_id = ANY($1::uuid[])",
        [given.event_id, scoped.event_id, overridden.event_id, none.event_id],
    )
    stored = {r["event_id"]: r["tenant_id"] for r in rows}
    assert stored == {
        given.event_id: "acme",
        scoped.event_id: "globex",
        overridden.event_id: "acme",
        none.event_id: None,
    }


async def test_a_bad_tenant_is_refused_before_anything_is_sent(
    asyncpg_conn: asyncpg.Connection, settings: Settings
) -> None:
    async with asyncpg_conn.transaction():
        with pytest.raises(InvalidNameError, match="tenant"):
            await outbox.emit(
                asyncpg_conn,
                service="assets",
                event_type="asset_created",
                data={},
                tenant_id="acme:*",
            )
        # The transaction is still usable.
        await outbox.emit(asyncpg_conn, service="assets", event_type="asset_created", data={})
    # And a row written by hand cannot carry one either: the CHECK of migration 0009.
    with pytest.raises(asyncpg.CheckViolationError):
        await asyncpg_conn.execute(
            "INSERT INTO outbox_events (event_id, stream, event_type, source, payload,"
            " correlation_id, tenant_id) VALUES (gen_random_uuid(), 'assets', 'x', 'assets',"
            " '{}', 'c', 'acme:*')"
        )


async def test_a_dedup_key_of_another_tenant_returns_nothing_of_its_event(
    asyncpg_conn: asyncpg.Connection, settings: Settings
) -> None:
    async with asyncpg_conn.transaction():
        first = await outbox.emit(
            asyncpg_conn,
            service="assets",
            event_type="asset_created",
            data={"secret": "acme's"},
            tenant_id="acme",
            dedup_key="asset-1",
        )
    async with asyncpg_conn.transaction():
        again = await outbox.emit(
            asyncpg_conn,
            service="assets",
            event_type="asset_created",
            data={"secret": "other"},
            tenant_id="acme",
            dedup_key="asset-1",
        )
    assert again.event_id == first.event_id
    assert again.data == {"secret": "acme's"}
    for tenant in ("globex", None):
        tx = asyncpg_conn.transaction()
        await tx.start()
        try:
            with pytest.raises(DedupKeyOfAnotherTenantError) as caught:
                await outbox.emit(
                    asyncpg_conn,
                    service="assets",
                    event_type="asset_created",
                    data={},
                    tenant_id=tenant,
                    dedup_key="asset-1",
                )
            assert "acme's" not in str(caught.value)
        finally:
            await tx.rollback()
    count = await asyncpg_conn.fetchval("SELECT count(*) FROM outbox_events")
    assert count == 1


@pytest.mark.parametrize("layout", ["document", "tagged"])
async def test_the_relay_publishes_each_tenants_events_to_its_own_streams_exactly_once(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
    layout: str,
) -> None:
    keys = Keys(relay_settings.stream_prefix, layout == "tagged")
    acme, globex = keys.for_tenant("acme"), keys.for_tenant("globex")
    acme_ids = await _emit(asyncpg_conn, "assets", 30, "acme")
    acme_high = await _emit(asyncpg_conn, "assets", 5, "acme", priority=MessagePriority.HIGH)
    globex_ids = await _emit(asyncpg_conn, "assets", 20, "globex")
    shared = await _emit(asyncpg_conn, "assets", 10, None)
    # identity is not in TENANT_STREAMS: its tenants' events stay on its stream, tagged.
    identity = await _emit(asyncpg_conn, "identity", 10, "acme")
    overrides = {"tenant_streams": "assets", "stream_key_layout": layout}
    async with start_relay(**overrides):

        async def arrived() -> bool:
            found = await _ids(redis_client, [*acme.streams_of("assets"), keys.stream("identity")])
            return len(found) >= 45

        await wait_until(arrived, what="acme's and identity's events")
        more_acme = await _emit(asyncpg_conn, "assets", 7, "acme")

        async def all_arrived() -> bool:
            return len(await _ids(redis_client, acme.streams_of("assets"))) >= 42

        await wait_until(all_arrived, what="the later events")
        await wait_until(
            lambda: _has(redis_client, globex.stream("assets"), 20), what="globex's events"
        )
        await wait_until(lambda: _has(redis_client, keys.stream("assets"), 10), what="shared")
    assert Counter(await _ids(redis_client, [acme.stream("assets")])) == Counter(
        acme_ids + more_acme
    )
    high = acme.stream("assets", MessagePriority.HIGH)
    assert Counter(await _ids(redis_client, [high])) == Counter(acme_high)
    assert Counter(await _ids(redis_client, [globex.stream("assets")])) == Counter(globex_ids)
    assert Counter(await _ids(redis_client, keys.streams_of("assets"))) == Counter(shared)
    assert Counter(await _ids(redis_client, [keys.stream("identity")])) == Counter(identity)
    for stream in (acme.stream("assets"), high, globex.stream("assets")):
        assert {e["tenant_id"] for e in await _entries(redis_client, stream)} == {
            stream.split(":")[2]
        }
        assert await cursor_order_ok(asyncpg_conn, redis_client, stream)
    assert all("tenant_id" not in e for e in await _entries(redis_client, keys.stream("assets")))
    assert {e["tenant_id"] for e in await _entries(redis_client, keys.stream("identity"))} == {
        "acme"
    }
    # Each tenant stream has its own watermark, committed with the service's cursor.
    marks = json.loads(
        await asyncpg_conn.fetchval("SELECT marks::text FROM relay_cursors WHERE stream = 'assets'")
    )
    assert set(marks) == {
        acme.stream("assets"),
        high,
        globex.stream("assets"),
        keys.stream("assets"),
    }
    for stream, mark in marks.items():
        assert Cursor.parse(mark) == Cursor.parse(
            (await redis_client.get(keys.watermark(stream))).decode()
        )


async def _has(client: aioredis.Redis, stream: str, count: int) -> bool:
    return int(await client.xlen(stream)) >= count


async def test_a_restarted_relay_keeps_the_tenant_streams_marks_and_repeats_nothing(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    acme = keys.for_tenant("acme").stream("assets")
    ids = await _emit(asyncpg_conn, "assets", 15, "acme")
    async with start_relay(tenant_streams="*"):
        await wait_until(lambda: _has(redis_client, acme, 15), what="first events")
    # Redis loses the tenant stream's last entries (a failover to a replica behind): the
    # restarted relay notices by the mark it committed and publishes them again, once.
    entries = await redis_client.xrange(acme)
    await redis_client.xdel(acme, *[entry_id for entry_id, _ in entries[10:]])
    kept = entries[9][1]
    txid = await asyncpg_conn.fetchval(
        "SELECT txid::text FROM outbox_events WHERE position = $1", int(kept[b"position"])
    )
    await redis_client.set(keys.watermark(acme), f"{txid}:{kept[b'position'].decode()}")
    ids += await _emit(asyncpg_conn, "assets", 5, "acme")
    async with start_relay(tenant_streams="*"):
        await wait_until(lambda: _has(redis_client, acme, 20), what="lost and new events")
    assert Counter(await _ids(redis_client, [acme])) == Counter(ids)
    assert await cursor_order_ok(asyncpg_conn, redis_client, acme)


async def test_a_tenant_client_reads_publishes_and_dead_letters_only_as_its_tenant(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    acme_ids = await _emit(asyncpg_conn, "assets", 6, "acme")
    await _emit(asyncpg_conn, "assets", 4, "globex")
    await _emit(asyncpg_conn, "assets", 3, None)
    async with start_relay(tenant_streams="assets"):
        await wait_until(
            lambda: _has(redis_client, keys.for_tenant("globex").stream("assets"), 4),
            what="published",
        )
        await wait_until(lambda: _has(redis_client, keys.stream("assets"), 3), what="shared")
    async with RedisStreamsClient(tenant="acme", max_retries=0) as client:
        assert client.keys == keys.for_tenant("acme")
        got: list[str] = []
        while len(got) < 6:
            messages = await client.consume_messages(["assets"], "c1", batch_size=10)
            assert messages, "acme's events did not arrive"
            got += [m.event_id for m in messages]
            assert {m.tenant_id for m in messages} == {"acme"}
            for m in messages:
                assert await client.acknowledge_message("assets", "assets_processors", m.id)
        assert sorted(got) == sorted(acme_ids)
        # What it publishes is acme's; a message with no retries left goes to acme's dead
        # letters, not the deployment's.
        entry_id = await client.publish_message("assets", "asset_created", "assets", {"n": 99})
        acme_stream = keys.for_tenant("acme").stream("assets")
        published = await redis_client.xrange(acme_stream, entry_id, entry_id)
        assert published[0][1][b"tenant_id"] == b"acme"
        retried = await client.consume_messages(["assets"], "c1", batch_size=10)
        failing = next(m for m in retried if m.id == entry_id)
        assert not await client.retry_message(failing, "assets_processors")
    acme_letters = DeadLetters(redis_client, keys.for_tenant("acme"), 3600)
    assert [letter.entry_id for letter in await acme_letters.select()] == [entry_id]
    assert await DeadLetters(redis_client, keys, 3600).count() == 0
    # Heartbeats are acme's too.
    assert await redis_client.exists(keys.for_tenant("acme").consumers) == 1
    assert await redis_client.exists(keys.consumers) == 0


def test_dlq_commands_work_on_one_tenants_dead_letters_only(
    settings: Settings, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = Keys(settings.stream_prefix)
    acme = [
        letter(sync_redis, keys.for_tenant("acme"), "assets", "asset_created", n) for n in range(3)
    ]
    globex = [
        letter(sync_redis, keys.for_tenant("globex"), "assets", "asset_created", 7, "globex-secret")
    ]
    shared = [letter(sync_redis, keys, "assets", "asset_created", 9)]

    def listed(*args: str) -> list[str]:
        assert main(["dlq", "list", "--json", *args]) == 0
        return [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]

    assert listed("--tenant", "acme") == acme
    assert listed("--tenant", "globex") == globex
    assert listed() == shared  # the deployment's own: no tenant's letters among them
    # globex's letter is not acme's: either no such letter, or acme's own of the same entry id
    # (ids are per stream), never globex's.
    main(["dlq", "show", "--tenant", "acme", globex[0]])
    out = capsys.readouterr()
    assert "globex-secret" not in out.out + out.err
    assert main(["dlq", "show", "--tenant", "globex", globex[0]]) == 0
    assert "globex-secret" in capsys.readouterr().out
    # Replay puts acme's letters back on acme's stream, and only there.
    assert main(["dlq", "replay", "--tenant", "acme", "--all", "--yes"]) == 0
    assert sync_redis.xlen(keys.for_tenant("acme").stream("assets")) == 3
    assert sync_redis.xlen(keys.stream("assets")) == 0
    assert sync_redis.xlen(keys.for_tenant("globex").dead_letter) == 1
    assert main(["dlq", "purge", "--tenant", "globex", "--all", "--yes"]) == 0
    assert sync_redis.xlen(keys.for_tenant("globex").dead_letter) == 0
    assert sync_redis.xlen(keys.dead_letter) == 1
    capsys.readouterr()
    assert main(["dlq", "list", "--tenant", "Bad:*"]) == 2
    assert "invalid tenant id" in capsys.readouterr().err


def _counting_projection(name: str) -> Projection:
    """Records (tenant of the event, tenant of the handler's context) per event applied."""
    projection = Projection(name, streams=["assets"], tables=["tenant_applied"])

    @projection.on("asset_created")
    async def record(event: StreamMessage, db: Any) -> None:
        await db.execute(
            "INSERT INTO tenant_applied (event_id, tenant, context) VALUES ($1, $2, $3)",
            event.event_id,
            event.tenant_id,
            outbox.current_tenant_id(),
        )

    return projection


async def test_a_tenants_projection_process_applies_that_tenants_events_only(
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
    projection_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    running: Runner,
) -> None:
    await asyncpg_conn.execute(
        "CREATE TABLE tenant_applied (event_id uuid PRIMARY KEY, tenant text, context text)"
    )
    keys = Keys(relay_settings.stream_prefix)
    acme = await _emit(asyncpg_conn, "assets", 12, "acme")
    await _emit(asyncpg_conn, "assets", 5, "globex")
    shared = await _emit(asyncpg_conn, "assets", 4, None)
    async with start_relay(tenant_streams="assets"):
        await wait_until(lambda: _has(redis_client, keys.stream("assets"), 4), what="shared")
        await wait_until(
            lambda: _has(redis_client, keys.for_tenant("acme").stream("assets"), 12), what="acme"
        )
    as_acme = configure(monkeypatch, TENANT_ID="acme", TENANT_STREAMS="assets")
    async with running([_counting_projection("per_tenant")], as_acme):
        await poll(lambda: _applied_count(asyncpg_conn, 12))
    rows = await asyncpg_conn.fetch("SELECT event_id::text, tenant, context FROM tenant_applied")
    assert sorted(r["event_id"] for r in rows) == sorted(acme)
    # The handler ran as acme: what it emits is acme's.
    assert {(r["tenant"], r["context"]) for r in rows} == {("acme", "acme")}
    # acme's process read acme's stream through its own group, never the deployment's.
    assert [g["name"] for g in await redis_client.xinfo_groups(keys.stream("assets"))] == []
    acme_groups = await redis_client.xinfo_groups(keys.for_tenant("acme").stream("assets"))
    assert [g["name"] for g in acme_groups] == [b"per_tenant"]

    # The deployment's rebuild replays what the deployment's streams carry: events without a
    # tenant (assets has tenant streams), never a tenant's.
    await asyncpg_conn.execute("TRUNCATE tenant_applied")
    deployment = configure(monkeypatch, TENANT_ID="", TENANT_STREAMS="assets")
    db = await asyncpg.connect(deployment.libpq_url())
    try:
        result = await rebuild(
            db,
            _counting_projection("deployment"),
            keys,
            tenants=TenantView.for_settings(deployment),
        )
        assert result.events == len(shared)
        with pytest.raises(ConfigurationError, match="cannot be rebuilt as tenant"):
            await rebuild(
                db,
                _counting_projection("deployment"),
                keys,
                tenants=TenantView.for_settings(as_acme),
            )
    finally:
        await db.close()
    rows = await asyncpg_conn.fetch("SELECT event_id::text, tenant FROM tenant_applied")
    assert sorted(r["event_id"] for r in rows) == sorted(shared)


async def _applied_count(conn: asyncpg.Connection, expected: int) -> bool:
    return int(await conn.fetchval("SELECT count(*) FROM tenant_applied")) >= expected
