"""Tenants' Redis ACL users on the real Redis (and a real cluster): a tenant's client works on
its own keys with exactly the commands ``outbox.streams.acl`` grants, and Redis refuses it
every other tenant's keys, the deployment's streams and dead letters, and its watermarks.

Each test makes its users under its own stream prefix (so their names are unique too) and
deletes them at the end. Reading another tenant's dead letters is tested both with
``DeadLetters(…, keys.for_tenant("globex"), …)`` and with ``outbox dlq list --tenant globex``
under acme's credentials.
"""

from __future__ import annotations

import asyncio
import stat
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from outbox import audit
from outbox.cli.main import main
from outbox.settings import Settings, get_settings
from outbox.streams import RedisAuthError, RedisStreamsClient
from outbox.streams.acl import apply, tenant_acl
from outbox.streams.connection import client_from_url, connect
from outbox.streams.dead_letter import DeadLetters, dead_letter_fields
from outbox.streams.keys import Keys
from tests.fixtures_cluster import RedisClusterServers

REDIS_URL = Settings().redis_streams_url.get_secret_value()
T = TypeVar("T")


def url_as(url: str, user: str, password: str) -> str:
    """``url`` authenticating as ``user`` (password in the URL, as a service would give it)."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def poll(read: Callable[[], Awaitable[T]], done: Callable[[T], bool], within_s: float) -> T:
    """Call ``read`` until ``done`` says yes, or fail after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        value = await read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"not done within {within_s}s: {value!r}"


async def denied(client: aioredis.Redis, user: str) -> list[dict[str, Any]]:
    """The ACL LOG entries of ``user``: every command Redis refused it."""
    entries = await client.acl_log(count=1000)
    return [e for e in entries if e.get("username") == user]


@dataclass
class TenantUser:
    tenant: str
    user: str
    password: str
    url: str


@pytest.fixture
async def tenant_users(
    settings: Settings, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, TenantUser]]:
    """Users for tenants acme and globex under the test's prefix; deleted afterwards."""
    # Short timings so that retries, reclaims and dead consumers happen within the test.
    for name, value in {
        "RETRY_BASE_DELAY_MS": "1",
        "RETRY_MAX_DELAY_MS": "5",
        "CLAIM_MIN_IDLE_MS": "1",
        "CLAIM_INTERVAL": "0.01",
        "DEAD_CONSUMER_IDLE_MS": "1",
        "REDIS_PASSWORD": "",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    keys = Keys(settings.stream_prefix)
    users = {}
    try:
        for tenant in ("acme", "globex"):
            password = uuid.uuid4().hex
            acl = tenant_acl(keys, tenant, password)
            assert await apply(redis_client, acl) == ["redis"]
            users[tenant] = TenantUser(
                tenant, acl.user, password, url_as(REDIS_URL, acl.user, password)
            )
        yield users
    finally:
        for user in users.values():
            await redis_client.execute_command("ACL", "DELUSER", user.user)


async def test_a_tenant_consumes_acks_retries_dead_letters_and_publishes_its_own_streams(
    settings: Settings, redis_client: aioredis.Redis, tenant_users: dict[str, TenantUser]
) -> None:
    acme = tenant_users["acme"]
    keys = Keys(settings.stream_prefix).for_tenant("acme")
    client = RedisStreamsClient(acme.url, tenant="acme", max_retries=1)
    await client.initialize()
    try:
        first = await client.publish_message("assets", "asset_created", "assets", {"n": 1})
        assert await redis_client.xlen(keys.stream("assets")) == 1
        got = await client.consume_messages(["assets"], "c1", batch_size=10, block_time=2000)
        assert [m.id for m in got] == [first]
        assert await client.acknowledge_message("assets", client.default_group("assets"), first)

        await client.publish_message("assets", "asset_created", "assets", {"n": 2})
        failing = (await client.consume_messages(["assets"], "c1", block_time=2000))[0]
        assert await client.retry_message(failing)  # retried once
        again = await poll(
            lambda: client.consume_messages(["assets"], "c1", block_time=200),
            lambda messages: bool(messages),
            within_s=10,
        )
        assert again[0].id == failing.id
        assert not await client.retry_message(again[0])  # budget spent: dead-lettered
        letters = await DeadLetters(redis_client, keys, 86400).select()
        assert [letter.entry_id for letter in letters] == [failing.id]
        assert letters[0].source_stream == keys.stream("assets")
        # The tenant can read its own dead letters with its own credentials.
        own = await DeadLetters(client.redis, keys, 86400).select()
        assert [letter.entry_id for letter in own] == [failing.id]

        # Another consumer takes over what c1 left pending; c1, then idle, is removed.
        await client.publish_message("assets", "asset_created", "assets", {"n": 3})
        left = await client.consume_messages(["assets"], "c1", block_time=2000)
        other = RedisStreamsClient(acme.url, tenant="acme")
        await other.initialize()
        try:
            taken = await poll(
                lambda: other.consume_messages(["assets"], "c2", block_time=20),
                lambda messages: bool(messages),
                within_s=10,
            )
            # (A consumer's first read after an XAUTOCLAIM also returns the claimed entry from
            # its own pending list: the same id twice, in one batch.)
            assert {m.id for m in taken} == {m.id for m in left}
            assert await other.acknowledge_message(
                "assets", other.default_group("assets"), taken[0].id
            )
        finally:
            await other.close()

        info = await client.get_stream_info("assets")
        assert info["length"] == 3
        assert await client.get_pending_messages("assets", client.default_group("assets")) == []
        high = await client.publish_message(
            "assets", "asset_created", "assets", {"n": 4}, priority="high"
        )
        assert await redis_client.xrange(keys.stream("assets") + ":high") != []
        assert high
    finally:
        await client.close()
    # Heartbeats (the script) landed in the tenant's hash, and Redis refused acme nothing.
    assert await redis_client.hlen(keys.consumers) >= 1
    assert await denied(redis_client, acme.user) == []


async def test_a_tenant_cannot_touch_another_tenant_or_the_deployment(
    settings: Settings, redis_client: aioredis.Redis, tenant_users: dict[str, TenantUser]
) -> None:
    acme = tenant_users["acme"]
    base = Keys(settings.stream_prefix)
    globex = base.for_tenant("globex")
    # Something to steal: globex's events and dead letters, the deployment's.
    await redis_client.xadd(globex.stream("assets"), {"secret": "globex"})
    await redis_client.xadd(globex.dead_letter, {"secret": "globex"})
    await redis_client.xadd(base.stream("assets"), {"secret": "deployment"})
    await redis_client.xadd(base.dead_letter, {"secret": "deployment"})

    # acme's credentials in a client that names globex's keys, or the deployment's.
    for tenant in ("globex", None):
        intruder = RedisStreamsClient(acme.url, tenant=tenant)
        await intruder.initialize()
        try:
            with pytest.raises(RedisAuthError, match="no permissions"):
                await intruder.consume_messages(["assets"], "c1", block_time=0)
            with pytest.raises(RedisAuthError, match="no permissions"):
                await intruder.get_stream_info("assets")
            with pytest.raises(RedisAuthError, match="no permissions"):
                await intruder.publish_message("assets", "asset_created", "assets", {"n": 1})
        finally:
            await intruder.close()

    own = await connect(acme.url)
    try:
        for stream in (globex.stream("assets"), base.stream("assets")):
            with pytest.raises(NoPermissionError):
                await own.xrange(stream)
        # Dead letters: globex's and the deployment's, read or added.
        fields = dead_letter_fields(
            source_stream="x",
            group="g",
            entry_id="1-0",
            attempts=1,
            error="e",
            payload={},
            consumer="c",
        )
        for keys in (globex, base):
            letters = DeadLetters(own, keys, 86400)
            with pytest.raises(RedisAuthError, match="no permissions"):
                await letters.select()
            with pytest.raises(RedisAuthError, match="no permissions"):
                await letters.count()
            with pytest.raises(RedisAuthError, match="no permissions"):
                await letters.add(fields)
        # The relay's watermark of acme's own stream in the tagged layout is inside acme's
        # prefix: within its read pattern (EXISTS), never writable (a string, or any type).
        tagged = Keys(settings.stream_prefix, tagged=True)
        mark = tagged.watermark(tagged.for_tenant("acme").stream("assets"))
        copy_mark = tagged.copy_watermark(tagged.for_tenant("acme").stream("assets"), "billing")
        assert mark.startswith(f"{settings.stream_prefix}:tenant:acme:")
        assert await own.exists(mark, copy_mark) == 0
        for key in (mark, copy_mark):
            with pytest.raises(NoPermissionError):
                await own.set(key, "999:0")
            with pytest.raises(NoPermissionError):
                await own.xadd(key, {"a": "b"})
            with pytest.raises(NoPermissionError):
                await own.hset(key, "a", "b")
        # The document layout's watermark is outside the tenant's prefix altogether.
        with pytest.raises(NoPermissionError):
            await own.exists(base.watermark(base.for_tenant("acme").stream("assets")))
        # No string writes, deletes, key listing or admin commands even on its own keys.
        own_stream = base.for_tenant("acme").stream("assets")
        for command in (
            ("SET", f"{settings.stream_prefix}:tenant:acme:x", "1"),
            ("DEL", own_stream),
            ("XDEL", own_stream, "1-0"),
            ("XTRIM", own_stream, "MAXLEN", "0"),
            ("KEYS", "*"),
            ("SCAN", "0"),
            ("FLUSHDB",),
            ("CONFIG", "GET", "*"),
            ("ACL", "LIST"),
            ("SUBSCRIBE", "x"),
        ):
            with pytest.raises(NoPermissionError):
                await own.execute_command(*command)
    finally:
        await own.aclose()
    assert await redis_client.xlen(globex.stream("assets")) == 1  # untouched
    assert await redis_client.xlen(base.dead_letter) == 1


def test_dlq_list_with_a_tenants_credentials_is_refused(
    settings: Settings,
    sync_redis: redis.Redis,
    tenant_users: dict[str, TenantUser],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = Keys(settings.stream_prefix)
    sync_redis.xadd(keys.dead_letter, {"secret": "deployment"})
    sync_redis.xadd(keys.for_tenant("globex").dead_letter, {"secret": "globex"})
    monkeypatch.setenv("REDIS_STREAMS_URL", tenant_users["acme"].url)
    get_settings.cache_clear()
    for args in (["dlq", "list"], ["dlq", "list", "--tenant", "globex"]):
        assert main(args) == 2
        out = capsys.readouterr()
        assert "no permissions" in out.err
        assert "secret" not in out.out + out.err
    # Its own: allowed, and empty.
    assert main(["dlq", "list", "--tenant", "acme"]) == 0
    assert "0 dead letter(s)" in capsys.readouterr().err


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_cli_prints_the_hash_and_applies_with_an_audit_record(
    settings: Settings,
    redis_client: aioredis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "")
    get_settings.cache_clear()
    user = f"{settings.stream_prefix}-tenant-acme"
    secret = tmp_path / "acme.password"
    try:
        # Printed only: the hash, not the password; nothing set.
        code = await asyncio.to_thread(
            main, ["tenants", "acl", "acme", "--generate-password", "--password-file", str(secret)]
        )
        assert code == 0
        password = secret.read_text().strip()
        assert _mode(secret) == 0o600
        printed = capsys.readouterr().out
        assert password not in printed
        assert f"ACL SETUSER {user} reset on #" in printed
        assert await redis_client.execute_command("ACL", "GETUSER", user) is None
        # Never overwrites a password file.
        again = ["tenants", "acl", "acme", "--generate-password", "--password-file", str(secret)]
        assert await asyncio.to_thread(main, again) == 2
        assert secret.read_text().strip() == password

        applied = ["tenants", "acl", "acme", "--password-file", str(secret), "--apply"]
        assert await asyncio.to_thread(main, applied) == 0
        out = capsys.readouterr().out
        assert password not in out
        assert "set ACL user" in out
        client = RedisStreamsClient(url_as(REDIS_URL, user, password), tenant="acme")
        await client.initialize()
        try:
            assert await client.publish_message("assets", "asset_created", "assets", {"n": 1})
        finally:
            await client.close()
        conn = await asyncpg.connect(get_settings().libpq_url())
        try:
            (entry,) = await audit.recent(conn, action="tenants.acl")
        finally:
            await conn.close()
        assert entry.target == "acme"
        assert entry.details["user"] == user
        assert password not in str(entry.as_dict())

        # The tenant's own credentials cannot set users: a clear refusal, exit 2, recorded.
        other = tmp_path / "globex.password"
        other.write_text("x" * 20)
        monkeypatch.setenv("REDIS_STREAMS_URL", url_as(REDIS_URL, user, password))
        get_settings.cache_clear()
        refused = ["tenants", "acl", "globex", "--password-file", str(other), "--apply"]
        assert await asyncio.to_thread(main, refused) == 2
        assert "needs +acl" in capsys.readouterr().err
        conn = await asyncpg.connect(get_settings().libpq_url())
        try:
            failed = await audit.recent(conn, action="tenants.acl")
        finally:
            await conn.close()
        assert failed[0].target == "globex"
        assert "error" in failed[0].details
        assert (
            await redis_client.execute_command(
                "ACL", "GETUSER", f"{settings.stream_prefix}-tenant-globex"
            )
            is None
        )
    finally:
        await redis_client.execute_command("ACL", "DELUSER", user)


async def test_cli_errors_are_one_line(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "p"
    secret.write_text("pw\n")
    assert (
        await asyncio.to_thread(main, ["tenants", "acl", "Bad:Id", "--password-file", str(secret)])
        == 2
    )
    assert "invalid tenant id" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["tenants", "acl", "acme"]) == 2
    assert "--password-file" in capsys.readouterr().err
    default = ["tenants", "acl", "acme", "--user", "default", "--password-file", str(secret)]
    assert await asyncio.to_thread(main, default) == 2
    assert "not 'default'" in capsys.readouterr().err


async def test_cli_applies_on_every_node_of_a_cluster(
    cluster_settings: Settings,
    redis_cluster: RedisClusterServers,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    user = f"{cluster_settings.stream_prefix}-tenant-acme"
    secret = tmp_path / "acme.password"
    command = ["tenants", "acl", "acme", "--generate-password", "--password-file", str(secret)]
    try:
        assert await asyncio.to_thread(main, [*command, "--apply"]) == 0
        assert f"on {len(redis_cluster.nodes)} node(s)" in capsys.readouterr().out
        for node in redis_cluster.nodes:
            rules = node.client().execute_command("ACL", "GETUSER", user)  # type: ignore[no-untyped-call]
            assert rules is not None, node.address
        password = secret.read_text().strip()
        url = url_as(redis_cluster.url, user, password)
        client = RedisStreamsClient(url, tenant="acme")
        await client.initialize()
        try:
            sent = await client.publish_message("assets", "asset_created", "assets", {"n": 1})
            got = await client.consume_messages(["assets"], "c1", block_time=2000)
            assert [m.id for m in got] == [sent]
            assert await client.acknowledge_message("assets", client.default_group("assets"), sent)
        finally:
            await client.close()
        for node in redis_cluster.nodes:  # nothing the client sent was refused, on any node
            log = node.client().acl_log(count=1000)
            assert [e for e in log if e.get("username") == user] == [], node.address
        intruder = RedisStreamsClient(url, tenant="globex")
        await intruder.initialize()
        try:
            with pytest.raises(RedisAuthError, match="no permissions"):
                await intruder.consume_messages(["assets"], "c1", block_time=0)
        finally:
            await intruder.close()
    finally:
        for node in redis_cluster.nodes:
            node.client().execute_command("ACL", "DELUSER", user)  # type: ignore[no-untyped-call]
        admin = client_from_url(redis_cluster.url, cluster=True)
        keys = [k async for k in admin.scan_iter(match=f"{cluster_settings.stream_prefix}:*")]
        for key in keys:
            await admin.delete(key)
        await admin.aclose()
