"""CorrelationIdMiddleware: one correlation id per request, visible to emit() via the context."""

from __future__ import annotations

from typing import Any

import pytest

from outbox.context import CorrelationIdMiddleware, correlation_scope, current_correlation_id


async def call(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, dict[bytes, bytes]]:
    seen: list[str | None] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(current_correlation_id())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
    await CorrelationIdMiddleware(app)(scope, receive, send)
    return seen[0], dict(sent[0]["headers"])


async def test_incoming_id_is_kept_and_echoed() -> None:
    seen, headers = await call([(b"x-correlation-id", b"req-123")])
    assert seen == "req-123"
    assert headers[b"x-correlation-id"] == b"req-123"
    assert current_correlation_id() is None


@pytest.mark.parametrize("incoming", [None, b"", b"x" * 129, b"bad\x01id"])
async def test_missing_or_unacceptable_id_is_replaced(incoming: bytes | None) -> None:
    seen, headers = await call([(b"x-correlation-id", incoming)] if incoming is not None else [])
    assert seen is not None
    assert seen.encode() != incoming
    assert headers[b"x-correlation-id"] == seen.encode()


async def test_each_request_gets_its_own_id() -> None:
    first, _ = await call([])
    second, _ = await call([])
    assert first != second


def test_scope_restores_previous_id() -> None:
    with correlation_scope("outer"):
        with correlation_scope() as inner:
            assert current_correlation_id() == inner != "outer"
        assert current_correlation_id() == "outer"
    assert current_correlation_id() is None
