"""The dashboard in real headless Chromium (Debian's, driven by Playwright): it loads, its numbers
move when events are emitted, and a dead letter's Replay button works. Saves a screenshot."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, Page, async_playwright, expect
from pydantic import SecretStr

import outbox
from outbox.settings import Settings
from outbox.streams.codec import encode_event
from outbox.streams.dead_letter import DeadLetters, dead_letter_fields
from outbox.streams.keys import Keys
from tests.fixtures_browser import CHROMIUM_SKIP_REASON
from tests.fixtures_monitor import MonitorFactory

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags of a closed network: no background connections Chromium would otherwise try.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=CHROMIUM_SKIP_REASON),
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        await browser.close()


async def emit(conn: asyncpg.Connection, count: int, **kwargs: Any) -> list[outbox.Event]:
    async with conn.transaction():
        return [
            await outbox.emit(
                conn,
                service="identity",
                event_type="user_created",
                data={"n": i, "email": "hidden@example.com"},
                **kwargs,
            )
            for i in range(count)
        ]


async def card(page: Page, name: str) -> str:
    return (await page.locator(f"#card-{name}").inner_text()).strip()


@pytest.mark.timeout(120)
async def test_dashboard_lives(
    monitor_server: MonitorFactory,
    browser: Browser,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    settings: Settings,
) -> None:
    keys = Keys(settings.stream_prefix)
    await emit(asyncpg_conn, 2)
    async with monitor_server(monitor_admin_token=SecretStr("dash-token")) as live:
        page = await browser.new_page(viewport={"width": 1400, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(live.url + "/")
        await expect(page.locator("#card-unpublished")).to_have_text("2", timeout=10_000)
        await expect(page.locator("#connection")).to_have_text("live", timeout=10_000)

        # Numbers change live after events are emitted.
        await emit(asyncpg_conn, 5)
        await expect(page.locator("#card-unpublished")).to_have_text("7", timeout=10_000)
        await expect(page.locator("#table-outbox tbody")).to_contain_text("identity")

        # A relay publishing again what Redis lost (decision 0011) says so in both tables.
        await asyncpg_conn.execute(
            """
            INSERT INTO relay_instances
                   (instance_id, host, pid, streams, cursors, republishing, redis_losses)
            VALUES ('relay-a', 'host', 1, '{identity}', '{"identity": "0:0"}',
                    '{"identity": "0:0"}', 2)
            """
        )
        await expect(page.locator("#table-outbox tbody")).to_contain_text(
            "publishing again from 0:0", timeout=10_000
        )
        relay = page.locator("#table-relays tbody tr", has_text="relay-a")
        await expect(relay.locator("td").nth(5)).to_have_text("2", timeout=10_000)
        await expect(page.locator("#table-status tbody")).to_contain_text(
            "publishing again events Redis lost: identity"
        )

        # A dead letter appears with a Replay button, which re-adds it to its stream.
        (event,) = await emit(asyncpg_conn, 1)
        stream = keys.stream("identity")
        dead = DeadLetters(redis_client, keys, settings.dead_letter_ttl_s)
        letter_id = await dead.add(
            dead_letter_fields(
                source_stream=stream,
                group="directory",
                entry_id="1-0",
                attempts=3,
                error="handler failed: boom",
                payload=encode_event(event, max_retries=3),
                consumer="w-1",
            )
        )
        row = page.locator("#table-dead tbody tr", has_text=letter_id)
        await expect(row).to_contain_text("handler failed: boom", timeout=10_000)
        await expect(page.locator("#card-dead")).to_have_text("1", timeout=10_000)
        assert "hidden@example.com" not in await page.content()

        await page.fill("#token", "dash-token")
        await row.get_by_role("button", name="Replay").click()
        await expect(page.locator("#dlq-message")).to_contain_text(
            f"replayed {letter_id}", timeout=10_000
        )
        await expect(page.locator("#card-dead")).to_have_text("0", timeout=10_000)
        assert await redis_client.xlen(keys.dead_letter) == 0
        entries = await redis_client.xrange(stream)
        assert [f[b"event_id"].decode() for _, f in entries] == [str(event.event_id)]

        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert errors == []


@pytest.mark.timeout(60)
async def test_replay_without_a_token_is_refused_in_the_page(
    monitor_server: MonitorFactory,
    browser: Browser,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    settings: Settings,
) -> None:
    keys = Keys(settings.stream_prefix)
    (event,) = await emit(asyncpg_conn, 1)
    dead = DeadLetters(redis_client, keys, settings.dead_letter_ttl_s)
    await dead.add(
        dead_letter_fields(
            source_stream=keys.stream("identity"),
            group="directory",
            entry_id="1-0",
            attempts=3,
            error="boom",
            payload=encode_event(event, max_retries=3),
            consumer="w",
        )
    )
    async with monitor_server() as live:
        page = await browser.new_page()
        await page.goto(live.url + "/")
        button = page.get_by_role("button", name="Replay")
        await button.click()
        await expect(page.locator("#dlq-message")).to_contain_text("write actions are disabled")
        assert await redis_client.xlen(keys.dead_letter) == 1
