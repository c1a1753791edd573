"""The original document's Quick Start, API Reference and Integration Guide snippets, run
verbatim through the one-line ``shared/redis_streams.py`` shim of docs/migrating.md (issue 23).

The snippets live in ``data/document_snippets.txt`` exactly as the document prints them; only
their URLs and passwords are replaced (:func:`adapt`). The shim is the code block docs/migrating.md
gives, written into a ``shared`` package of a temporary directory, as a service would have it: the
project itself installs no top-level ``shared`` (tests/acceptance/test_wheel.py pins that).
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis.asyncio as aioredis

import outbox.streams
from outbox.settings import Settings
from tests.fixtures_projections import poll

ROOT = Path(__file__).resolve().parents[2]
SNIPPETS = Path(__file__).with_name("data") / "document_snippets.txt"
#: The Redis the environment names (REDIS_STREAMS_URL), as in tests/conftest.py.
REDIS_URL = Settings().redis_streams_url.get_secret_value()
#: The document's URLs and password, and what they become here (our Redis has no password).
REPLACEMENTS = {
    '"redis://localhost:6380/0"': repr(REDIS_URL),
    '"redis://redis-streams:6379/0"': repr(REDIS_URL),
    '"opsconductor-streams-2024"': '""',
}


def snippets() -> dict[str, str]:
    """``section/snippet`` → its code, as the document prints it."""
    text = SNIPPETS.read_text()
    parts = re.split(r"^#### (\S+) \(line \d+\)\n", text, flags=re.M)
    return {name: code for name, code in zip(parts[1::2], parts[2::2], strict=True)}


def adapt(code: str) -> str:
    """The snippet with our URL and password instead of the document's; nothing else."""
    for old, new in REPLACEMENTS.items():
        code = code.replace(old, new)
    return code


async def run(name: str, namespace: dict[str, Any]) -> None:
    """Run one snippet in ``namespace`` as a notebook would: top-level ``await`` allowed."""
    code = compile(adapt(snippets()[name]), name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if code.co_flags & inspect.CO_COROUTINE:
        await eval(code, namespace)
    else:
        exec(code, namespace)


def shim_source() -> str:
    """The shim's code block in docs/migrating.md."""
    text = (ROOT / "docs" / "migrating.md").read_text()
    found = re.search(r"<!-- shim: shared/redis_streams.py -->\n```python\n(.*?)```", text, re.S)
    assert found, "docs/migrating.md lost its shim block"
    return found.group(1)


@pytest.fixture
def shim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[None]:
    """A service's own ``shared`` package holding only the documented shim."""
    assert importlib.util.find_spec("shared") is None, "something installs a top-level shared"
    package = tmp_path / "shared"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "redis_streams.py").write_text(shim_source())
    monkeypatch.syspath_prepend(str(tmp_path))
    # The snippets read these (the document's create_streams_client() takes no arguments).
    monkeypatch.setenv("REDIS_STREAMS_URL", REDIS_URL)
    monkeypatch.setenv("REDIS_PASSWORD", "")
    yield
    for name in ("shared.redis_streams", "shared"):
        sys.modules.pop(name, None)


def shared_module() -> ModuleType:
    import shared.redis_streams  # type: ignore[import-not-found]

    module: ModuleType = shared.redis_streams
    return module


def test_the_shim_serves_the_whole_client_api(shim: None) -> None:
    module = shared_module()
    for name in outbox.streams.__all__:
        assert getattr(module, name) is getattr(outbox.streams, name), name
    # The document's Message Structure: every field it lists, with its type's name.
    namespace: dict[str, Any] = {"dataclass": dataclasses.dataclass}
    exec(
        "from typing import Any, Dict\n" + snippets()["api-reference/message-structure"], namespace
    )
    documented = {f.name for f in dataclasses.fields(namespace["StreamMessage"])}
    ours = {f.name for f in dataclasses.fields(module.StreamMessage)}
    assert documented <= ours, documented - ours


async def test_quick_start_basic_usage(shim: None, redis_client: aioredis.Redis) -> None:
    namespace: dict[str, Any] = {}
    await run("quick-start/basic-usage", namespace)

    client, message_id = namespace["client"], namespace["message_id"]
    key = client.keys.stream("identity", namespace["MessagePriority"].HIGH)
    ((entry_id, fields),) = await redis_client.xrange(key)
    assert entry_id.decode() == message_id
    assert fields[b"event_type"] == b"user_created"
    assert fields[b"user_id"] == b"admin"


async def test_api_reference(shim: None, redis_client: aioredis.Redis) -> None:
    processed: list[Any] = []

    async def process_message(message: Any) -> bool:
        processed.append(message)
        return message.data.get("action") != "fail"

    namespace: dict[str, Any] = {"process_message": process_message}
    await run("api-reference/initialization", namespace)
    namespace["MessagePriority"] = shared_module().MessagePriority  # imported by the reader
    await run("api-reference/publishing", namespace)
    client = namespace["client"]
    # One more event that process_message fails, so that Stream Information has one pending.
    await client.publish_message(
        stream="identity",
        event_type="user_updated",
        service="identity-service",
        data={"user_id": "123", "action": "fail"},
    )
    await run("api-reference/consuming", namespace)
    await run("api-reference/stream-information", namespace)

    assert processed[0].id == namespace["message_id"]  # HIGH before NORMAL
    assert processed[0].correlation_id == "req-123"
    assert processed[0].stream == "identity"
    assert namespace["info"]["length"] == 2
    assert [g["name"] for g in namespace["info"]["consumer_groups"]] == ["identity_processors"]
    assert len(namespace["pending"]) == 1  # the failed one waits for its retry

    # The retry comes back until its budget is used, then it is dead-lettered and acked.
    for _ in range(client.max_retries):
        again = await client.consume_messages(["identity"], "worker-1", block_time=3000)
        assert [m.event_type for m in again] == ["user_updated"]
        await client.retry_message(again[0])
    assert await client.get_pending_messages("identity", "identity_processors") == []
    letters = await redis_client.xrange(client.keys.dead_letter)
    assert len(letters) == 1
    assert letters[0][1][b"group"] == b"identity_processors"
    await client.close()


class _Logger:
    """The service's structlog-style logger: an error in the snippets fails the test."""

    def __init__(self) -> None:
        self.warnings: list[dict[str, Any]] = []

    def error(self, text: str, **fields: Any) -> None:
        raise AssertionError(f"{text} {fields}")

    def warning(self, text: str, **fields: Any) -> None:
        self.warnings.append({"text": text, **fields})


@dataclasses.dataclass
class _User:
    id: str
    email: str
    created_at: datetime


class _Recorder:
    """Stand-ins for the service's own database, cache and analytics: they record calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def create_user(self, user_data: dict[str, Any]) -> _User:
        self.calls.append(("db.create_user", user_data["id"]))
        return _User(user_data["id"], user_data["email"], datetime(2026, 12, 2, tzinfo=UTC))

    async def set(self, key: str, value: Any) -> None:
        self.calls.append(("cache.set", key))

    async def track_user_signup(self, user_id: str) -> None:
        self.calls.append(("analytics.track_user_signup", user_id))


async def test_integration_guide(shim: None, redis_client: aioredis.Redis) -> None:
    """Add to Service, Publish Events, Consume Events and Event Handler Examples, assembled into
    the service class the guide describes (its methods are printed as separate snippets)."""
    logger = _Logger()
    recorder = _Recorder()
    module = shared_module()
    # What the service's main.py imports besides the guide's own import line.
    namespace: dict[str, Any] = {
        "os": os,
        "asyncio": asyncio,
        "logger": logger,
        "MessagePriority": module.MessagePriority,
        "StreamMessage": module.StreamMessage,
        "Dict": dict,
        "Any": Any,
    }
    for name in (
        "integration-guide/add-to-service",
        "integration-guide/publish-events",
        "integration-guide/consume-events",
        "integration-guide/event-handlers",
    ):
        await run(name, namespace)
    service_class = namespace["YourService"]
    for method in ("create_user", "process_events", "handle_message", "on_user_created"):
        setattr(service_class, method, namespace[method])

    service = service_class()
    service.db = service.cache = service.analytics = recorder

    async def send_welcome_email(email: str) -> None:
        recorder.calls.append(("send_welcome_email", email))

    service.send_welcome_email = send_welcome_email

    await service.startup()
    user = await service.create_user({"id": "42", "email": "a@example.com"})
    assert user.id == "42"
    task = asyncio.create_task(service.process_events())
    try:

        async def signed_up() -> bool:
            return ("analytics.track_user_signup", "42") in recorder.calls

        await poll(signed_up, timeout_s=10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert recorder.calls == [
        ("db.create_user", "42"),
        ("cache.set", "user:42"),
        ("send_welcome_email", "a@example.com"),
        ("analytics.track_user_signup", "42"),
    ]
    # Acknowledged in identity_processors: nothing pending.
    pending = await service.streams_client.get_pending_messages("identity", "identity_processors")
    assert pending == []
    key = service.streams_client.keys.stream("identity", module.MessagePriority.HIGH)
    ((_, fields),) = await redis_client.xrange(key)
    assert fields[b"user_id"] == b"42"
    await service.shutdown()
