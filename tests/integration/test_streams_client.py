"""The original document's client API, run as written (import path aside) against real Redis;
TLS, ACL users, error translation and reconnects."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any
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
    StreamMessage,
    WrongTypeError,
    create_streams_client,
    publish_event,
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


async def test_basic_usage_example(doc_env: None, redis_client: aioredis.Redis) -> None:
    # --- "Basic Usage Example", as written ---
    client = await create_streams_client()

    message_id = await publish_event(
        client=client,
        service="identity",
        event_type="user_created",
        data={"user_id": "123", "email": "user@example.com"},
        priority=MessagePriority.HIGH,
        user_id="admin",
    )

    print(f"Published message: {message_id}")

    await client.close()
    # ---
    key = client.keys.stream("identity", MessagePriority.HIGH)
    ((entry_id, fields),) = await redis_client.xrange(key)
    assert entry_id.decode() == message_id
    assert fields[b"event_type"] == b"user_created"
    assert fields[b"user_id"] == b"admin"


async def test_api_reference_examples(doc_env: None, redis_client: aioredis.Redis) -> None:
    processed: list[StreamMessage] = []

    async def process_message(message: StreamMessage) -> bool:
        processed.append(message)
        return message.data.get("action") != "fail"

    # --- "Initialization" (the document's password is not ours: Redis here has none) ---
    client = RedisStreamsClient(redis_url=REDIS_URL, password=os.environ["REDIS_PASSWORD"])
    await client.initialize()

    # --- "Publishing Messages" ---
    message_id = await client.publish_message(
        stream="identity",
        event_type="user_created",
        service="identity-service",
        data={"user_id": "123", "action": "create"},
        priority=MessagePriority.HIGH,
        user_id="admin",
        correlation_id="req-123",
    )
    await client.publish_message(
        stream="identity",
        event_type="user_updated",
        service="identity-service",
        data={"user_id": "123", "action": "fail"},
    )

    # --- "Consuming Messages" ---
    messages = await client.consume_messages(
        streams=["identity", "assets"], consumer_name="worker-1", batch_size=10, block_time=1000
    )

    for message in messages:
        # Process message
        success = await process_message(message)

        if success:
            # Acknowledge successful processing
            await client.acknowledge_message(message.stream, "identity_processors", message.id)
        else:
            # Retry or send to dead letter queue
            await client.retry_message(message)

    # --- "Stream Information" ---
    info = await client.get_stream_info("identity")
    print(f"Stream length: {info['length']}")
    print(f"Consumer groups: {len(info['consumer_groups'])}")

    pending = await client.get_pending_messages("identity", "identity_processors")
    print(f"Pending messages: {len(pending)}")
    # ---

    assert processed[0].id == message_id  # HIGH before NORMAL
    assert processed[0].correlation_id == "req-123"
    assert processed[0].stream == "identity"
    assert info["length"] == 2
    assert [g["name"] for g in info["consumer_groups"]] == ["identity_processors"]
    assert len(pending) == 1  # the failed one waits for its retry

    # The retry comes back (delivery counter 2), fails until the budget is used, then it is
    # dead-lettered and acked.
    for _ in range(client.max_retries):
        again = await client.consume_messages(["identity"], "worker-1", block_time=3000)
        assert [m.event_type for m in again] == ["user_updated"]
        await client.retry_message(again[0])
    assert await client.get_pending_messages("identity", "identity_processors") == []
    letters = await redis_client.xrange(client.keys.dead_letter)
    assert len(letters) == 1
    assert letters[0][1][b"group"] == b"identity_processors"
    await client.close()


async def test_integration_guide_example(doc_env: None) -> None:
    handled: list[str] = []

    class Logger:
        def error(self, text: str, **fields: Any) -> None:
            raise AssertionError(f"{text} {fields}")

        def warning(self, text: str, **fields: Any) -> None:
            pass

    logger = Logger()

    # --- "Service Integration", as written ---
    class YourService:
        def __init__(self) -> None:
            self.streams_client: RedisStreamsClient | None = None

        async def startup(self) -> None:
            # Initialize Redis Streams client
            self.streams_client = await create_streams_client(
                redis_url=os.getenv("REDIS_STREAMS_URL", "redis://redis-streams:6379/0"),
                password=os.getenv("REDIS_PASSWORD", "opsconductor-streams-2024"),
            )

        async def shutdown(self) -> None:
            if self.streams_client:
                await self.streams_client.close()

        async def create_user(self, user_data: dict[str, Any]) -> dict[str, Any]:
            user = {"id": user_data["id"], "email": user_data["email"], "created_at": "now"}
            assert self.streams_client is not None
            await publish_event(
                client=self.streams_client,
                service="identity",
                event_type="user_created",
                data={
                    "user_id": user["id"],
                    "email": user["email"],
                    "created_at": user["created_at"],
                },
                priority=MessagePriority.HIGH,
                user_id=user["id"],
            )
            return user

        async def process_events(self) -> None:
            assert self.streams_client is not None
            while True:
                try:
                    messages = await self.streams_client.consume_messages(
                        streams=["identity", "assets"],
                        consumer_name=f"service-{os.getpid()}",
                        batch_size=10,
                    )

                    for message in messages:
                        success = await self.handle_message(message)

                        if success:
                            await self.streams_client.acknowledge_message(
                                message.stream, f"{message.stream}_processors", message.id
                            )
                        else:
                            await self.streams_client.retry_message(message)

                except Exception as e:
                    logger.error("Error processing events", error=str(e))
                    await asyncio.sleep(5)

        async def handle_message(self, message: StreamMessage) -> bool:
            """Handle incoming stream message"""
            try:
                if message.event_type == "user_created":
                    handled.append(message.data["user_id"])
                else:
                    logger.warning("Unknown event type", event_type=message.event_type)
                return True
            except Exception as e:
                logger.error("Error handling message", message_id=message.id, error=str(e))
                return False

    # ---
    service = YourService()
    await service.startup()
    await service.create_user({"id": "42", "email": "a@example.com"})
    task = asyncio.create_task(service.process_events())
    try:
        for _ in range(100):
            if handled:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert handled == ["42"]
    assert service.streams_client is not None
    pending = await service.streams_client.get_pending_messages("identity", "identity_processors")
    assert pending == []
    await service.shutdown()


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
