"""/ws against a real uvicorn server: a snapshot at once, updates after events, Origin checks."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

import outbox
from tests.fixtures_monitor import MonitorFactory


async def next_snapshot(socket: Any) -> dict[str, Any]:
    message = json.loads(await socket.recv())
    assert message["type"] == "snapshot"
    snapshot: dict[str, Any] = message["snapshot"]
    return snapshot


def unpublished(snapshot: dict[str, Any], stream: str) -> int:
    return sum(r["unpublished"] for r in snapshot["outbox"]["streams"] if r["stream"] == stream)


async def test_snapshot_then_live_updates(
    monitor_server: MonitorFactory, asyncpg_conn: asyncpg.Connection
) -> None:
    async with (
        monitor_server() as live,
        websockets.connect(
            f"ws://127.0.0.1:{live.port}/ws", origin=f"http://127.0.0.1:{live.port}"
        ) as socket,
    ):
        first = await next_snapshot(socket)
        assert unpublished(first, "communication") == 0
        async with asyncpg_conn.transaction():
            for i in range(3):
                await outbox.emit(
                    asyncpg_conn,
                    service="communication",
                    event_type="email_sent",
                    data={"n": i, "token": "abc"},
                )
        for _ in range(100):  # updates arrive every REFRESH_INTERVAL (0.2 s here)
            snapshot = await next_snapshot(socket)
            if unpublished(snapshot, "communication") == 3:
                break
        else:
            pytest.fail("the emitted events never showed up over /ws")


async def test_no_origin_header_is_allowed(monitor_server: MonitorFactory) -> None:
    """Non-browser clients send no Origin; only browsers need the same-origin check."""
    async with (
        monitor_server() as live,
        websockets.connect(f"ws://127.0.0.1:{live.port}/ws") as socket,
    ):
        assert (await next_snapshot(socket))["status"]


async def test_foreign_origin_is_refused(monitor_server: MonitorFactory) -> None:
    async with monitor_server() as live:
        with pytest.raises((InvalidStatus, ConnectionClosed)):
            async with websockets.connect(
                f"ws://127.0.0.1:{live.port}/ws", origin="http://evil.example"
            ) as socket:
                await socket.recv()


async def test_configured_origin_is_allowed(monitor_server: MonitorFactory) -> None:
    async with (
        monitor_server(monitor_allowed_origins="https://ops.example") as live,
        websockets.connect(
            f"ws://127.0.0.1:{live.port}/ws", origin="https://ops.example"
        ) as socket,
    ):
        assert (await next_snapshot(socket))["outbox"]
