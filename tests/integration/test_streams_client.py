"""The original document's client against real Redis: TLS, ACL users, error translation and
reconnects. Its snippets run verbatim in test_document_snippets.py."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ResponseError

from outbox.settings import Settings
from outbox.streams import (
    GroupMissingError,
    MessagePriority,
    RedisAuthError,
    RedisStreamsClient,
    WrongTypeError,
    create_streams_client,
)
from outbox.streams.connection import redis_from_url
from outbox.streams.consumer import GroupConsumer
from outbox.streams.errors import translate

#: The Redis the environment names (REDIS_STREAMS_URL), as in tests/conftest.py.
REDIS_URL = Settings().redis_streams_url.get_secret_value()


def url_for_user(user: str) -> str:
    """REDIS_URL with ``user`` as its ACL user instead of any user and password it has."""
    parts = urlsplit(REDIS_URL)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}@{host}{port}"))


@pytest.fixture
def doc_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples read REDIS_STREAMS_URL / REDIS_PASSWORD; our Redis has no password."""
    monkeypatch.setenv("REDIS_STREAMS_URL", REDIS_URL)
    monkeypatch.setenv("REDIS_PASSWORD", "")


async def test_acl_user_in_the_url(settings: Settings, redis_client: aioredis.Redis) -> None:
    user = f"acl{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    prefix = settings.stream_prefix
    await redis_client.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", f"~{prefix}:*", "+@all"
    )
    try:
        client = RedisStreamsClient(url_for_user(user), password)
        await client.initialize()
        entry = await client.publish_message("identity", "user_created", "identity", {"a": 1})
        assert entry
        whoami = await client.redis.execute_command("ACL", "WHOAMI")
        assert whoami.decode() == user
        await client.close()
        wrong = RedisStreamsClient(url_for_user(user), "not-the-password")
        with pytest.raises(RedisAuthError):
            await wrong.initialize()
    finally:
        await redis_client.execute_command("ACL", "DELUSER", user)


def test_rediss_url_uses_tls_connections() -> None:
    client = redis_from_url("rediss://user@redis.example:6380/0", "secret")
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class is SSLConnection
    assert kwargs["username"] == "user"
    assert kwargs["password"] == "secret"


async def test_wrongtype_names_the_key(doc_env: None, redis_client: aioredis.Redis) -> None:
    client = await create_streams_client()
    key = client.keys.stream("identity")
    await redis_client.set(key, "not a stream")
    with pytest.raises(WrongTypeError) as raised:
        await client.publish_message("identity", "user_created", "identity", {})
    assert key in str(raised.value)
    with pytest.raises(WrongTypeError):
        await client.consume_messages(["identity"], "w", block_time=0)
    await client.close()


async def test_missing_group_is_created_and_busygroup_tolerated(
    doc_env: None, redis_client: aioredis.Redis
) -> None:
    client = await create_streams_client()
    stream = client.keys.stream("assets")
    consumer = GroupConsumer(client.redis, "g", "c", {MessagePriority.NORMAL: [stream]})
    await client.publish_message("assets", "asset_created", "assets", {"asset_id": "a"})
    # NOGROUP on read: the group is created (from the start) and the read retried.
    entries = await consumer.read_new(10, 0)
    assert len(entries) == 1
    await consumer.ensure_groups()  # BUSYGROUP: fine
    await redis_client.xgroup_destroy(stream, "g")
    # A group destroyed under a running consumer is recreated from the stream's start.
    assert len(await consumer.read_new(10, 0)) == 1
    # Without the automatic creation, NOGROUP is a clear project error.
    with pytest.raises(ResponseError) as raised:
        await client.redis.xreadgroup("nogroup", "c", {stream: ">"})
    assert isinstance(translate(raised.value, stream), GroupMissingError)
    await client.close()


async def test_reconnects_after_the_connection_is_killed(
    doc_env: None, redis_client: aioredis.Redis
) -> None:
    client = await create_streams_client()
    await client.publish_message("system", "ping", "system", {})
    client_id = await client.redis.client_id()
    await redis_client.client_kill_filter(_id=client_id)
    # The next command reconnects transparently (redis-py Retry with backoff).
    await client.publish_message("system", "ping", "system", {})
    info = await client.get_stream_info("system")
    assert info["length"] == 2
    await client.close()


async def test_group_reads_keep_odd_field_values_and_ack_reports_errors(
    doc_env: None, redis_client: aioredis.Redis
) -> None:
    client = await create_streams_client()
    stream = client.keys.stream("assets")
    consumer = GroupConsumer(client.redis, "g", "c", {MessagePriority.NORMAL: [stream]})
    await consumer.ensure_groups()
    plain = {"event_id": "e1", "note": "ünïcode"}
    with_nul = {"event_id": "e2", "note": "a\0b", "after": "c"}
    not_utf8 = {"event_id": "e3", "note": b"\xff\xfe"}
    for fields in (plain, with_nul, not_utf8):
        await redis_client.xadd(stream, fields)  # type: ignore[arg-type]
    entries = await consumer.read_new(10, 0)
    # Values come back whole, decoded where they can be, and paired with the right field.
    assert [dict(entry.fields) for entry in entries] == [
        plain,
        {b"event_id": b"e2", b"note": b"a\0b", b"after": b"c"},
        {b"event_id": b"e3", b"note": b"\xff\xfe"},
    ]
    await consumer.ack({stream: [entry.id for entry in entries]})
    assert (await redis_client.xpending(stream, "g"))["pending"] == 0
    # An XACK Redis refuses is a project error naming the key, not a silent no-op.
    other = client.keys.stream("network")
    await redis_client.set(other, "not a stream")
    with pytest.raises(WrongTypeError) as raised:
        await consumer.ack({other: ["1-1"]})
    assert other in str(raised.value)
    await client.close()
