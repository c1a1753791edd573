"""outbox.streams.connection.raw_pipeline: one round trip, replies in order, errors returned, a hung
server bounded by the client's socket timeout without a stale reply leaking into the next call."""

from __future__ import annotations

import signal
import time

import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from outbox.streams.connection import raw_pipeline
from tests.fixtures_relay import OwnRedis


async def test_replies_come_back_in_order_with_errors_returned(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    stream, plain = f"{stream_prefix}:s", f"{stream_prefix}:plain"
    await redis_client.set(plain, "x")
    replies = await raw_pipeline(
        redis_client,
        [
            ("XADD", stream, "*", "a", "1"),
            ("XINFO", "STREAM", f"{stream_prefix}:missing"),
            ("XLEN", plain),
            ("XLEN", stream),
        ],
    )
    assert isinstance(replies[0], bytes)
    assert isinstance(replies[1], redis_errors.ResponseError)
    assert "no such key" in str(replies[1]).lower()
    assert isinstance(replies[2], redis_errors.ResponseError)
    assert "WRONGTYPE" in str(replies[2]) or "wrong kind" in str(replies[2]).lower()
    assert replies[3] == 1


async def test_raise_on_error_raises_the_first_error_after_every_command_ran(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    plain, after = f"{stream_prefix}:plain", f"{stream_prefix}:after"
    await redis_client.set(plain, "x")
    commands = [("XLEN", plain), ("XINFO", "STREAM", plain), ("SET", after, "ran")]
    with pytest.raises(redis_errors.ResponseError) as raised:
        await raw_pipeline(redis_client, commands, raise_on_error=True)
    assert "WRONGTYPE" in str(raised.value) or "wrong kind" in str(raised.value).lower()
    # Every reply was read (the connection stays usable) and the later command ran.
    assert await redis_client.get(after) == b"ran"
    assert await raw_pipeline(redis_client, [("GET", after)], raise_on_error=True) == [b"ran"]


async def test_a_hung_server_times_out_once_and_the_connection_is_not_reused(
    own_redis: OwnRedis,
) -> None:
    client = aioredis.Redis.from_url(own_redis.url, socket_timeout=0.5)
    try:
        assert await raw_pipeline(client, [("SET", "k", "before")]) == [b"OK"]
        assert own_redis.process is not None
        own_redis.process.send_signal(signal.SIGSTOP)  # accepts bytes, answers nothing
        try:
            started = time.monotonic()
            with pytest.raises(redis_errors.TimeoutError):
                await raw_pipeline(client, [("GET", "k")] * 300)
            elapsed = time.monotonic() - started
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        # Bounded by the client's socket timeout, not waiting for the server.
        assert 0.4 < elapsed < 3.0
        # The 300 replies the stopped server answers after SIGCONT go to the dropped
        # connection, never to the next caller.
        assert await raw_pipeline(client, [("SET", "k", "after"), ("GET", "k")]) == [
            b"OK",
            b"after",
        ]
    finally:
        await client.aclose()
