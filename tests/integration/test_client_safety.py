"""The document's client made safe (issue 23): consumers take over what dead consumers left,
get their own pending back after a restart, report heartbeats and counters the monitor shows;
``publish_event`` validates registered schemas and is traced by correlation id; ``outbox
maintain`` trims what only the client writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pydantic
import pytest
import redis.asyncio as aioredis

import outbox
from outbox.errors import EventSchemaError
from outbox.settings import Settings
from outbox.streams import RedisStreamsClient, publish_event
from outbox.streams.connection import reply_text
from outbox.streams.keys import Keys
from tests.fixtures_cluster import RedisTarget
from tests.fixtures_monitor import MonitorFactory
from tests.fixtures_relay import wait_until

GROUP = "ai_processors"


@pytest.fixture
def fast_claims(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Keys:
    """Claims after 300 ms idle, every 0.1 s, two entries per stream a round."""
    for name, value in {
        "CLAIM_MIN_IDLE_MS": "300",
        "CLAIM_INTERVAL": "0.1",
        "CLAIM_COUNT": "2",
        "CONSUMER_HEARTBEAT_INTERVAL": "0.2",
        "MAX_RETRIES": "3",
    }.items():
        monkeypatch.setenv(name, value)
    return Keys(settings.stream_prefix)


async def _publish(client: RedisStreamsClient, count: int) -> list[str]:
    return [await publish_event(client, "ai", "insight_generated", {"n": i}) for i in range(count)]


async def _pending(redis: aioredis.Redis, key: str) -> dict[str, int]:
    """Pending entries per consumer of GROUP."""
    summary = await redis.xpending(key, GROUP)
    return {c["name"].decode(): int(c["pending"]) for c in summary["consumers"]}


async def test_a_dead_consumers_entries_are_claimed_in_bounded_rounds(
    fast_claims: Keys, redis_client: aioredis.Redis
) -> None:
    key = fast_claims.stream("ai")
    dead = RedisStreamsClient()
    await dead.initialize()
    ids = await _publish(dead, 5)
    got = await dead.consume_messages(["ai"], "service-1111", block_time=0)
    assert [m.id for m in got] == ids
    await dead.redis.aclose()  # killed: no ack, no close
    assert await _pending(redis_client, key) == {"service-1111": 5}

    async with RedisStreamsClient() as alive:
        taken: list[str] = []
        rounds: list[int] = []
        deadline = time.monotonic() + 20
        while len(taken) < 5:
            assert time.monotonic() < deadline, f"claimed only {taken}"
            batch = await alive.consume_messages(["ai"], "service-2222", block_time=200)
            if batch:
                rounds.append(len(batch))
            for message in batch:
                taken.append(message.id)
                assert await alive.acknowledge_message("ai", GROUP, message.id)
        assert sorted(taken) == sorted(ids)
        assert max(rounds) <= 2  # CLAIM_COUNT per stream and round
        assert await _pending(redis_client, key) == {}
    # The report is written every CONSUMER_HEARTBEAT_INTERVAL, and a last time at close.
    report = json.loads(await redis_client.hget(fast_claims.consumers, f"{GROUP}/service-2222"))
    assert (report["processed"], report["reclaimed"], report["stopped"]) == (5, 5, True)


async def test_entries_claimed_on_a_consumers_first_read_come_once(
    fast_claims: Keys, redis_client: aioredis.Redis
) -> None:
    """A new consumer's first read claims idle entries into its own pending list and then reads
    that list: each claimed entry must be delivered once, not twice in the same batch."""
    key = fast_claims.stream("ai")
    dead = RedisStreamsClient()
    await dead.initialize()
    ids = await _publish(dead, 2)
    assert len(await dead.consume_messages(["ai"], "service-1111", block_time=0)) == 2
    await dead.redis.aclose()

    async def idle_enough() -> bool:
        entries = await redis_client.xpending_range(key, GROUP, "-", "+", 10)
        return len(entries) == 2 and all(e["time_since_delivered"] >= 400 for e in entries)

    await wait_until(idle_enough, what="the dead consumer's entries to be claimable")
    async with RedisStreamsClient() as alive:
        batch = await alive.consume_messages(["ai"], "service-2222", block_time=0)
        assert sorted(m.id for m in batch) == sorted(ids)  # each once
        for message in batch:
            assert await alive.acknowledge_message("ai", GROUP, message.id)
    assert await _pending(redis_client, key) == {}


async def test_a_restarted_consumer_gets_its_own_pending_back_at_once(
    fast_claims: Keys, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAIM_MIN_IDLE_MS", "3600000")  # nobody else could take them
    first = RedisStreamsClient()
    await first.initialize()
    ids = await _publish(first, 3)
    assert len(await first.consume_messages(["ai"], "ai-worker-1", block_time=0)) == 3
    await first.redis.aclose()
    async with RedisStreamsClient() as again:
        back = await again.consume_messages(["ai"], "ai-worker-1", block_time=0)
        assert [m.id for m in back] == ids
        for message in back:
            await again.acknowledge_message("ai", GROUP, message.id)
    assert await _pending(redis_client, fast_claims.stream("ai")) == {}


async def test_a_message_that_kills_every_consumer_is_dead_lettered(
    fast_claims: Keys, redis_client: aioredis.Redis
) -> None:
    """Delivered 1 + MAX_RETRIES times without an ack (each consumer died on it): the next
    claim sends it to the dead letters instead of killing one more consumer."""
    async with RedisStreamsClient() as publisher:
        (poison,) = await _publish(publisher, 1)
    for n in range(4):
        victim = RedisStreamsClient()
        await victim.initialize()
        deadline = time.monotonic() + 10
        while not (got := await victim.consume_messages(["ai"], f"victim-{n}", block_time=200)):
            assert time.monotonic() < deadline
        assert [m.id for m in got] == [poison]
        await victim.redis.aclose()
    async with RedisStreamsClient() as last:

        async def dead_lettered() -> bool:
            assert await last.consume_messages(["ai"], "survivor", block_time=100) == []
            return bool(await redis_client.xlen(fast_claims.dead_letter))

        await wait_until(dead_lettered, what="the poison message in the dead letters")
    ((_, letter),) = await redis_client.xrange(fast_claims.dead_letter)
    assert letter[b"entry_id"].decode() == poison
    assert b"never acknowledged" in letter[b"error"]
    assert await _pending(redis_client, fast_claims.stream("ai")) == {}


class Insight(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    n: int


async def test_publish_event_validates_the_registered_schema(
    fast_claims: Keys, redis_client: aioredis.Redis
) -> None:
    outbox.register_schema("insight_generated", Insight, service="ai")
    try:
        async with RedisStreamsClient() as client:
            with pytest.raises(EventSchemaError, match="Insight"):
                await publish_event(client, "ai", "insight_generated", {"n": "not a number"})
            with pytest.raises(EventSchemaError):
                await publish_event(client, "ai", "insight_generated", {"n": 1, "x": 2})
            assert await redis_client.exists(fast_claims.stream("ai")) == 0  # nothing sent
            await publish_event(client, "ai", "insight_generated", {"n": 1})
    finally:
        outbox.schemas.unregister("insight_generated", service="ai")
    assert await redis_client.xlen(fast_claims.stream("ai")) == 1


async def test_the_monitor_shows_client_consumers_and_their_status(
    fast_claims: Keys, redis_client: aioredis.Redis, monitor_server: MonitorFactory
) -> None:
    """Heartbeats on Redis's clock; a running consumer is OK, one that died is ERR, one that
    closed its client is stopped; a direct publish is found by its correlation id."""
    async with monitor_server(refresh_interval_s=0.2) as live:
        running = RedisStreamsClient()
        await running.initialize()
        await publish_event(running, "ai", "insight_generated", {"n": 1}, correlation_id="c-1")
        (message,) = await running.consume_messages(["ai"], "ai-1", block_time=0)
        await running.acknowledge_message("ai", GROUP, message.id)
        async with RedisStreamsClient() as closed:
            await closed.consume_messages(["ai"], "ai-2", block_time=0)
        dying = RedisStreamsClient()
        await dying.initialize()
        await dying.consume_messages(["ai"], "ai-3", block_time=0)
        await dying.redis.aclose()  # stops beating

        async def statuses() -> dict[str, str]:
            status = (await live.http.get("/api/status")).json()
            return {
                c["component"]: c["level"]
                for c in status["components"]
                if c["component"].startswith("client:")
            }

        async def judged() -> bool:
            await running.consume_messages(["ai"], "ai-1", block_time=0)  # keeps beating
            return (await statuses()).get(f"client:{GROUP}/ai-3") == "ERR"

        await wait_until(judged, timeout_s=20, what="the dead consumer's heartbeat lost")
        assert await statuses() == {f"client:{GROUP}/ai-1": "OK", f"client:{GROUP}/ai-3": "ERR"}
        consumers = {c["consumer"]: c for c in (await live.http.get("/api/consumers")).json()}
        assert consumers["ai-1"]["processed"] == 1
        assert consumers["ai-1"]["streams"] == fast_claims.streams_of("ai")
        assert consumers["ai-2"]["stopped"] is True
        assert consumers["ai-1"]["heartbeat_age_s"] < 5
        metrics = (await live.http.get("/metrics")).text
        sample = f'outbox_client_consumer_processed_total{{consumer="ai-1",group="{GROUP}"}} 1.0'
        assert sample in metrics
        trace = (await live.http.get("/api/events?correlation_id=c-1")).json()
        (event,) = trace["events"]
        assert (event["position"], event["event_type"]) == (None, "insight_generated")
        assert event["entry"] == {"stream": fast_claims.stream("ai"), "id": message.id}
        await running.close()


def _maintain(settings: Settings, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "STREAM_PREFIX": settings.stream_prefix,
        "REDIS_STREAMS_URL": settings.redis_streams_url.get_secret_value(),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli.main", "maintain"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_outbox_maintain_trims_what_only_the_client_writes(
    settings: Settings, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No relay, no PostgreSQL (DATABASE_URL points nowhere), services in different cluster
    slots: each stream is trimmed up to its slowest group and no further."""
    for name, value in redis_target.env().items():
        monkeypatch.setenv(name, value)
    redis = redis_target.client
    keys = redis_target.keys(settings.stream_prefix)
    services = ("ai", "network", "assets")
    ids: dict[str, list[str]] = {}
    async with RedisStreamsClient(prefix=keys.prefix) as client:
        for service in services:
            key = keys.stream(service)
            ids[service] = [
                await publish_event(client, service, "thing_happened", {"n": i}) for i in range(300)
            ]
            await redis.xgroup_create(key, "fast", "$")
            await redis.xgroup_create(key, "slow", "0")
            # "slow" has acked the first 200 entries and holds the 201st pending.
            await redis.xreadgroup("slow", "s", {key: ">"}, count=201)
            await redis.xack(key, "slow", *ids[service][:200])
    result = _maintain(
        settings,
        RELAY_STREAM_RETENTION_S="0",
        DATABASE_URL="postgresql://nobody@127.0.0.1:1/x",
        **redis_target.env(),
    )
    assert result.returncode == 0, result.stderr
    assert "3 stream(s) and the dead letters checked" in result.stdout
    remaining: dict[str, list[str]] = {}
    for service in services:
        entries = await redis.xrange(keys.stream(service))
        kept = remaining[service] = [reply_text(entry_id) for entry_id, _ in entries]
        assert ids[service][200] in kept  # the slow group's pending entry and all after it
        assert kept == ids[service][len(ids[service]) - len(kept) :]
        assert len(kept) < 300  # whole radix-tree nodes below it went (MINID ~)
    again = _maintain(settings, RELAY_STREAM_RETENTION_S="3600", **redis_target.env())
    assert again.returncode == 0, again.stderr
    for service in services:
        entries = await redis.xrange(keys.stream(service))
        assert [reply_text(entry_id) for entry_id, _ in entries] == remaining[service]


async def test_outbox_maintain_forgets_consumers_silent_for_a_day(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    keys = Keys(settings.stream_prefix)
    old = {"group": "g", "consumer": "gone", "streams": [], "heartbeat_at": time.time() - 90_000}
    await redis_client.hset(keys.consumers, "g/gone", json.dumps(old))
    async with RedisStreamsClient(prefix=keys.prefix) as client:
        await client.consume_messages(["ai"], "here", block_time=0)
        result = _maintain(settings)
        assert result.returncode == 0, result.stderr
        assert "1 silent consumer report(s) forgotten" in result.stdout
        assert set(await redis_client.hkeys(keys.consumers)) == {b"ai_processors/here"}
