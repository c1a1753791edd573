"""Fixtures of the monitor tests (registered in tests/conftest.py).

- ``monitor_server``: factory that starts the monitor app in a real uvicorn server on a free
  port, in the test's event loop; yields a :class:`LiveMonitor` with its base URL and an
  ``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from outbox.monitor.app import create_app
from outbox.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveMonitor:
    url: str
    port: int
    http: httpx.AsyncClient
    settings: Settings


MonitorFactory = Callable[..., AbstractAsyncContextManager[LiveMonitor]]


@pytest.fixture
def monitor_server(settings: Settings) -> MonitorFactory:
    """``async with monitor_server(**overrides) as live``: a running monitor for this test."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[LiveMonitor]:
        config_settings = settings.model_copy(update={"refresh_interval_s": 0.2, **overrides})
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(config_settings),
                host="127.0.0.1",
                port=port,
                log_level="warning",
                lifespan="on",
            )
        )
        task = asyncio.create_task(server.serve())
        deadline = asyncio.get_running_loop().time() + 20
        while not server.started:
            if task.done():
                task.result()
            assert asyncio.get_running_loop().time() < deadline, "monitor did not start"
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            try:
                yield LiveMonitor(url, port, http, config_settings)
            finally:
                server.should_exit = True
                await task

    return start
