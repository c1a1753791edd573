"""The publish script against a real Redis: the watermark is the cursor pair, not the position."""

from __future__ import annotations

import redis.asyncio as aioredis

from outbox.streams.errors import StreamRefusedError
from outbox.streams.keys import Keys
from outbox.streams.publish import StreamBatch, publish_batches


def _batch(stream: str, *cursors: tuple[int, int]) -> StreamBatch:
    batch = StreamBatch(stream)
    for txid, position in cursors:
        batch.add_fields(txid, position, ["position", str(position), "txid", str(txid)])
    return batch


async def _positions(client: aioredis.Redis, stream: str) -> list[int]:
    return [int(f[b"position"]) for _, f in await client.xrange(stream)]


async def test_a_later_transaction_with_lower_positions_is_published(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    keys = Keys(stream_prefix)
    stream = keys.stream("identity")
    # Transaction 10 wrote position 5; transaction 11, committed later, wrote position 3.
    [first] = await publish_batches(redis_client, keys, [_batch(stream, (10, 5))])
    [second] = await publish_batches(redis_client, keys, [_batch(stream, (11, 3))])
    assert not isinstance(first, StreamRefusedError)
    assert not isinstance(second, StreamRefusedError)
    assert (first.published, second.published) == (1, 1)
    assert await _positions(redis_client, stream) == [5, 3]
    assert await redis_client.get(keys.watermark(stream)) == b"11:3"


async def test_a_replayed_batch_adds_nothing_and_the_rest_is_added_once(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    keys = Keys(stream_prefix)
    stream = keys.stream("identity")
    await publish_batches(redis_client, keys, [_batch(stream, (7, 1), (7, 2), (9, 100))])
    # Re-sent from an older cursor, overlapping: only (10, 1) is new. 9 < 10 although "9" > "10"
    # as text, and 100 > 1: the script must compare numbers of any length, txid first.
    [result] = await publish_batches(
        redis_client, keys, [_batch(stream, (7, 2), (9, 100), (10, 1))]
    )
    assert not isinstance(result, StreamRefusedError)
    assert (result.published, result.skipped) == (1, 2)
    assert await _positions(redis_client, stream) == [1, 2, 100, 1]
    assert await redis_client.get(keys.watermark(stream)) == b"10:1"


async def test_big_cursor_numbers_compare_exactly(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    keys = Keys(stream_prefix)
    stream = keys.stream("identity")
    big = 2**60  # beyond a Lua double's exact integers
    await publish_batches(redis_client, keys, [_batch(stream, (big, 1))])
    [result] = await publish_batches(redis_client, keys, [_batch(stream, (big, 1), (big + 1, 1))])
    assert not isinstance(result, StreamRefusedError)
    assert (result.published, result.skipped) == (1, 1)


async def test_a_wrong_type_key_refuses_only_its_stream(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    keys = Keys(stream_prefix)
    bad, good = keys.stream("assets"), keys.stream("identity")
    await redis_client.set(bad, "not a stream")
    refused, ok = await publish_batches(
        redis_client, keys, [_batch(bad, (1, 1)), _batch(good, (1, 2))]
    )
    assert isinstance(refused, StreamRefusedError)
    assert "WRONGTYPE" in refused.reason
    assert not isinstance(ok, StreamRefusedError)
    assert ok.published == 1
    assert await redis_client.get(bad) == b"not a stream"
    assert await redis_client.exists(keys.watermark(bad)) == 0


async def test_publish_survives_an_empty_script_cache(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    keys = Keys(stream_prefix)
    stream = keys.stream("identity")
    await redis_client.script_flush()
    [result] = await publish_batches(redis_client, keys, [_batch(stream, (1, 1))])
    assert not isinstance(result, StreamRefusedError)
    assert result.published == 1


async def test_fields_that_are_not_a_json_array_stop_the_batch_where_they_are(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    """The events before the bad one are added and the watermark says so; the bad one and the
    rest are refused, so a retry with good fields adds each of them once."""
    keys = Keys(stream_prefix)
    stream = keys.stream("identity")
    batch = _batch(stream, (1, 1))
    batch.add(1, 2, '{"not": "an array"')
    batch.add_fields(1, 3, ["position", "3"])
    [refused] = await publish_batches(redis_client, keys, [batch])
    assert isinstance(refused, StreamRefusedError)
    assert "not a JSON array" in refused.reason
    assert await _positions(redis_client, stream) == [1]
    assert await redis_client.get(keys.watermark(stream)) == b"1:1"
    [result] = await publish_batches(redis_client, keys, [_batch(stream, (1, 1), (1, 2), (1, 3))])
    assert not isinstance(result, StreamRefusedError)
    assert (result.published, result.skipped) == (2, 1)
    assert await _positions(redis_client, stream) == [1, 2, 3]


async def test_entry_fields_keep_every_character(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    keys = Keys(stream_prefix)
    stream = keys.stream("identity")
    text = 'q"uote \\back\\slash \n\t\r\x01 Zoë 日本 \u2028 😀 \\u0041'
    batch = StreamBatch(stream)
    batch.add_fields(1, 1, ["data", text, "empty", ""])
    await publish_batches(redis_client, keys, [batch])
    [(_, fields)] = await redis_client.xrange(stream)
    assert fields == {b"data": text.encode(), b"empty": b""}


async def test_a_watermark_behind_what_was_seen_adds_nothing_and_says_where_it_is(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    """Redis lost writes it had acknowledged: adding the next events would leave a gap."""
    keys = Keys(stream_prefix)
    stream, mark = keys.stream("identity"), keys.watermark(keys.stream("identity"))
    await publish_batches(redis_client, keys, [_batch(stream, (7, 1), (9, 100))])

    def seen(at: str, *cursors: tuple[int, int]) -> StreamBatch:
        batch = _batch(stream, *cursors)
        batch.seen = at
        return batch

    # What was seen is what Redis holds, or Redis is ahead (another relay): published as usual.
    [same] = await publish_batches(redis_client, keys, [seen("9:100", (10, 2))])
    [ahead] = await publish_batches(redis_client, keys, [seen("7:1", (9, 100), (11, 3))])
    assert not isinstance(same, StreamRefusedError)
    assert not isinstance(ahead, StreamRefusedError)
    assert (same.published, same.behind, ahead.published, ahead.skipped) == (1, None, 1, 1)
    # Redis loses its last write (11:3): adding 12:4 would leave a gap, so nothing is added.
    last_id = (await redis_client.xrevrange(stream, count=1))[0][0]
    await redis_client.xdel(stream, last_id)
    await redis_client.set(mark, "10:2")
    [behind] = await publish_batches(redis_client, keys, [seen("11:3", (12, 4))])
    assert not isinstance(behind, StreamRefusedError)
    assert (behind.published, behind.skipped, behind.behind) == (0, 0, "10:2")
    # The watermark gone altogether (a restart without persistence): "" says so.
    await redis_client.delete(mark)
    [gone] = await publish_batches(redis_client, keys, [seen("11:3", (12, 4))])
    assert not isinstance(gone, StreamRefusedError)
    assert gone.behind == ""
    assert await _positions(redis_client, stream) == [1, 100, 2]
    # Re-sent from what Redis holds, the lost event and the next one go through, in order.
    await redis_client.set(mark, "10:2")
    [resent] = await publish_batches(redis_client, keys, [seen("10:2", (11, 3), (12, 4))])
    assert not isinstance(resent, StreamRefusedError)
    assert (resent.published, resent.behind) == (2, None)
    assert await _positions(redis_client, stream) == [1, 100, 2, 3, 4]


async def test_a_stream_written_from_another_source_is_refused_whole(
    redis_client: aioredis.Redis, stream_prefix: str
) -> None:
    """The first batch with a source id records it beside the watermark; a batch of another
    source is refused before anything is written, so its events are never skipped by a
    watermark of another database's txids. Without a source id (``""``) nothing is checked."""
    keys = Keys(stream_prefix)
    stream = keys.stream("identity")
    source_key = keys.watermark_source(keys.watermark(stream))
    [first] = await publish_batches(redis_client, keys, [_batch(stream, (100, 1))], "db-a")
    assert not isinstance(first, StreamRefusedError)
    assert await redis_client.get(source_key) == b"db-a"
    [other] = await publish_batches(redis_client, keys, [_batch(stream, (5, 2))], "db-b")
    assert isinstance(other, StreamRefusedError)
    assert "published from the outbox db-a, not from db-b" in str(other)
    [again] = await publish_batches(redis_client, keys, [_batch(stream, (101, 1))], "db-a")
    assert not isinstance(again, StreamRefusedError)
    assert again.published == 1
    assert await _positions(redis_client, stream) == [1, 1]
    assert await redis_client.get(keys.watermark(stream)) == b"101:1"
    assert await redis_client.get(source_key) == b"db-a"
    # A batch that adds nothing (all at or below the watermark) records no source.
    older = keys.stream("assets")
    await redis_client.set(keys.watermark(older), "200:1")
    [skipped] = await publish_batches(redis_client, keys, [_batch(older, (5, 1))], "db-c")
    assert not isinstance(skipped, StreamRefusedError)
    assert (skipped.published, skipped.skipped) == (0, 1)
    assert await redis_client.exists(keys.watermark_source(keys.watermark(older))) == 0
