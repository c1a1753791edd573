"""One stream, one source (migration 0012): a second database whose relay writes a stream the
first one writes is refused loudly, and none of the first one's events is lost or repeated."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from outbox.settings import Settings
from outbox.streams.keys import Keys
from tests.conftest import _admin
from tests.conftest import _url_for as url_for
from tests.fixtures_relay import StartRelay, emit_events, published, wait_until


@pytest.fixture
def second_database_url(template_database: str) -> Iterator[str]:
    """Another outbox database, cloned from the migrated template like every test's. A clone
    (CREATE DATABASE ... TEMPLATE) copies the source id too, so it is given one of its own, as
    docs/operations.md says to do for a copied database."""
    name = f"outbox_test_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    url = url_for(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE outbox_source SET source_id = gen_random_uuid()")
    yield url
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_a_second_database_writing_the_same_stream_is_refused(
    asyncpg_conn: asyncpg.Connection,
    second_database_url: str,
    redis_client: aioredis.Redis,
    start_relay: StartRelay,
    relay_settings: Settings,
) -> None:
    keys = Keys(relay_settings.stream_prefix)
    first = await emit_events(asyncpg_conn, 10, per_tx=5)
    other = await asyncpg.connect(second_database_url)
    try:
        assert await other.fetchval("SELECT source_id FROM outbox_source") != (
            await asyncpg_conn.fetchval("SELECT source_id FROM outbox_source")
        )
        theirs = await emit_events(other, 10, per_tx=5)
        async with start_relay():
            await wait_until(
                lambda: _count_is(redis_client, keys, len(first)), what="the first database's"
            )
            async with start_relay(database_url=SecretStr(second_database_url)) as second:

                async def refused() -> bool:
                    return "not from" in second.status.stream_errors.get("identity", "")

                await wait_until(refused, what="the second database's relay to be refused")
                more = await emit_events(asyncpg_conn, 5, per_tx=5)
                await wait_until(
                    lambda: _count_is(redis_client, keys, len(first) + len(more)),
                    what="the first database's later events",
                )
            # Nothing of the second database's was published, and its cursor did not move.
            assert await other.fetchval(
                "SELECT txid::text FROM relay_cursors WHERE stream = 'identity'"
            ) in (None, "0")
    finally:
        await other.close()
    found = await published(redis_client, keys, ("identity",))
    assert Counter(found) == Counter(first + more)
    assert not set(theirs) & set(found)


async def _count_is(client: aioredis.Redis, keys: Keys, n: int) -> bool:
    return len(await published(client, keys, ("identity",))) >= n
