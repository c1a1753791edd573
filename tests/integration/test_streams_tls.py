"""A real TLS Redis: a throwaway CA (trustme), a TLS-only ``redis-server`` with a password and an
ACL user, and the project's client over ``rediss://``.

A private CA is trusted the way redis-py reads it from the URL: ``?ssl_ca_certs=<file>`` (any
query parameter redis-py does not parse itself is passed to the connection as a keyword, and
``SSLConnection`` takes ``ssl_ca_certs``). Certificates are verified, hostname included
(redis-py's defaults ``ssl_cert_reqs="required"``, ``ssl_check_hostname=True``).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import trustme
from redis.asyncio.connection import SSLConnection

from outbox.envelope import MessagePriority
from outbox.streams import RedisAuthError, RedisStreamsClient, RedisUnavailableError
from outbox.streams.consumer import GroupConsumer

HOST = "127.0.0.1"
#: How long redis-server may take to answer over TLS after it was started.
START_TIMEOUT_S = 15.0
#: A refused TLS connect must surface well within this. Refusals are not retried
#: (streams.connection.ReconnectRetry); even the whole reconnect budget is about 10 s, so more
#: than this is a hang.
FAIL_FAST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TlsRedis:
    port: int
    ca_file: Path
    other_ca_file: Path
    user: str
    user_password: str
    default_password: str
    log: Path

    def url(
        self,
        *,
        host: str = HOST,
        user: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
    ) -> str:
        """``rediss://user[:password]@host:port/0[?ssl_ca_certs=…]``; the ACL user by default."""
        secret = f":{password}" if password else ""
        query = f"?ssl_ca_certs={quote(str(ca_file), safe='/')}" if ca_file else ""
        return f"rediss://{self.user if user is None else user}{secret}@{host}:{self.port}/0{query}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _answers_over_tls(port: int, ca_file: Path) -> bool:
    """True once the server completes a verified TLS handshake and replies to PING."""
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with (
            socket.create_connection((HOST, port), timeout=1) as raw,
            context.wrap_socket(raw, server_hostname=HOST) as tls,
        ):
            tls.sendall(b"PING\r\n")
            return tls.recv(64)[:1] in (b"+", b"-")  # +PONG, or -NOAUTH: it answers
    except OSError:  # not listening yet (ssl.SSLError is an OSError too)
        return False


def _built_without_tls(output: str) -> bool:
    """redis-server built without TLS rejects the tls-* options at start."""
    lowered = output.lower()
    return "tls" in lowered and ("bad directive" in lowered or "not supported" in lowered)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (CI installs it: .ci/run)")
    work = tmp_path_factory.mktemp("tls-redis")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(work / "ca.pem"))
    # The server certificate names 127.0.0.1 only: connecting as "localhost" must fail.
    server_cert = ca.issue_cert(HOST)
    server_cert.private_key_pem.write_to_path(str(work / "server.key"))
    server_cert.cert_chain_pems[0].write_to_path(str(work / "server.pem"))
    trustme.CA().cert_pem.write_to_path(str(work / "other-ca.pem"))
    user, user_password = f"tls{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    default_password = uuid.uuid4().hex
    log = work / "redis.log"
    output = ""

    for _attempt in range(3):  # a free port can be taken before redis-server binds it
        port = _free_port()
        command = [
            binary,
            "--bind", HOST,
            "--port", "0",  # no plain-text listener at all
            "--tls-port", str(port),
            "--tls-cert-file", str(work / "server.pem"),
            "--tls-key-file", str(work / "server.key"),
            "--tls-ca-cert-file", str(work / "ca.pem"),
            "--tls-auth-clients", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(work),
            "--requirepass", default_password,
            "--user", user, "on", f">{user_password}", "~*", "&*", "+@all",
        ]  # fmt: skip
        with log.open("wb") as out:
            server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while server.poll() is None and not _answers_over_tls(port, work / "ca.pem"):
            if time.monotonic() > deadline:
                server.kill()
                server.wait()
                pytest.fail(
                    f"redis-server did not answer over TLS within {START_TIMEOUT_S} s:\n"
                    + log.read_text(errors="replace")
                )
            time.sleep(0.05)
        if server.poll() is None:
            break
        output = log.read_text(errors="replace")
        if _built_without_tls(output):
            pytest.skip(f"{binary} was built without TLS support:\n{output}")
        if "address already in use" not in output.lower():
            pytest.fail(f"redis-server exited with {server.returncode} at start:\n{output}")
    else:
        pytest.fail(f"redis-server found no free TLS port in 3 attempts:\n{output}")

    yield TlsRedis(
        port, work / "ca.pem", work / "other-ca.pem", user, user_password, default_password, log
    )
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def test_the_server_refuses_plain_text(tls_redis: TlsRedis) -> None:
    """The fixture itself: only TLS is spoken on the port, so a client that worked used TLS."""
    with socket.create_connection((HOST, tls_redis.port), timeout=5) as raw:
        raw.sendall(b"PING\r\n")
        try:
            reply = raw.recv(64)
        except ConnectionResetError:
            reply = b""
    assert not reply.startswith((b"+", b"-")), reply


@pytest.mark.parametrize("login", ["acl-user-in-url", "acl-user-password-argument", "default"])
async def test_publish_and_consume_over_tls(
    tls_redis: TlsRedis, stream_prefix: str, login: str
) -> None:
    ca_file = tls_redis.ca_file
    if login == "acl-user-in-url":
        url, password, user = (
            tls_redis.url(password=tls_redis.user_password, ca_file=ca_file),
            None,
            tls_redis.user,
        )
    elif login == "acl-user-password-argument":  # REDIS_PASSWORD beside the user in the URL
        url, password, user = (
            tls_redis.url(ca_file=ca_file),
            tls_redis.user_password,
            tls_redis.user,
        )
    else:  # requirepass: the default user
        url = tls_redis.url(user="", password=tls_redis.default_password, ca_file=ca_file)
        password, user = None, "default"
    async with RedisStreamsClient(url, password, prefix=stream_prefix) as client:
        assert client.redis.connection_pool.connection_class is SSLConnection
        whoami = await client.redis.acl_whoami()
        assert (whoami.decode() if isinstance(whoami, bytes) else whoami) == user

        normal = await client.publish_message(
            "identity", "user_created", "identity", {"user_id": "u1", "name": "Zoë"}
        )
        high = await client.publish_message(
            "identity", "user_locked", "identity", {"user_id": "u1"}, MessagePriority.HIGH
        )
        messages = await client.consume_messages(["identity"], "tls-worker", block_time=2000)
        assert [(m.id, m.event_type) for m in messages] == [
            (high, "user_locked"),
            (normal, "user_created"),
        ]
        assert messages[1].data == {"user_id": "u1", "name": "Zoë"}
        for message in messages:
            assert await client.acknowledge_message(
                message.stream, "identity_processors", message.id
            )
        assert await client.get_pending_messages("identity", "identity_processors") == []


async def test_group_reads_and_pipelined_acks_over_tls(
    tls_redis: TlsRedis, stream_prefix: str
) -> None:
    """The projection worker's path: GroupConsumer.read_new, and XACKs sent in one write
    (streams.connection.raw_pipeline) on the TLS connection."""
    url = tls_redis.url(password=tls_redis.user_password, ca_file=tls_redis.ca_file)
    async with RedisStreamsClient(url, prefix=stream_prefix) as client:
        for i in range(300):
            await client.publish_message("assets", "asset_seen", "assets", {"i": i})
        stream = client.keys.stream("assets")
        consumer = GroupConsumer(client.redis, "tls", "c1", {MessagePriority.NORMAL: [stream]})
        entries = await consumer.read_new(500, 0)
        assert len(entries) == 300
        await consumer.ack({stream: [entry.id for entry in entries]})
        assert (await client.redis.xpending(stream, "tls"))["pending"] == 0


@pytest.mark.parametrize("case", ["system-trust-store", "another-ca", "wrong-hostname"])
async def test_a_client_that_does_not_trust_the_server_fails_clearly(
    tls_redis: TlsRedis, stream_prefix: str, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenSSL's default store may be redirected by these; the throwaway CA is in none of them.
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    url = {
        "system-trust-store": tls_redis.url(password=tls_redis.user_password),
        "another-ca": tls_redis.url(
            password=tls_redis.user_password, ca_file=tls_redis.other_ca_file
        ),
        # The CA is trusted, but the certificate names 127.0.0.1, not localhost.
        "wrong-hostname": tls_redis.url(
            host="localhost", password=tls_redis.user_password, ca_file=tls_redis.ca_file
        ),
    }[case]
    client = RedisStreamsClient(url, prefix=stream_prefix)
    with pytest.raises(RedisUnavailableError) as raised:
        await asyncio.wait_for(client.initialize(), FAIL_FAST_TIMEOUT_S)
    # The project error names the cause, so an operator knows it is TLS trust, not a dead Redis.
    assert "certificate verify failed" in str(raised.value).lower()
    assert "ssl_ca_certs" in str(raised.value)  # the error says how to trust a private CA


async def test_wrong_password_over_tls_is_an_auth_error(
    tls_redis: TlsRedis, stream_prefix: str
) -> None:
    client = RedisStreamsClient(
        tls_redis.url(ca_file=tls_redis.ca_file),
        "not-the-password",
        prefix=stream_prefix,
    )
    admin = RedisStreamsClient(
        tls_redis.url(password=tls_redis.user_password, ca_file=tls_redis.ca_file),
        prefix=stream_prefix,
    )
    async with admin:
        before = await _connections_received(admin)
        with pytest.raises(RedisAuthError):
            await asyncio.wait_for(client.initialize(), FAIL_FAST_TIMEOUT_S)
        # One connection: a refusal is not retried (it used to be, 8 times, about 7 s).
        assert await _connections_received(admin) - before == 1


async def _connections_received(client: RedisStreamsClient) -> int:
    stats = await client.redis.info("stats")
    received: int = stats["total_connections_received"]
    return received
