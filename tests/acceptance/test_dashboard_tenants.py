"""The dashboard's tenant selector in real headless Chromium: with the admin token it lists the
tenants and narrows every table to the one chosen; with a tenant's token the page shows that
tenant only (docs/monitor.md#tenants)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, async_playwright, expect
from pydantic import SecretStr

import outbox
from outbox.settings import Settings
from outbox.streams.keys import Keys
from tests.fixtures_browser import CHROMIUM_SKIP_REASON
from tests.fixtures_monitor import MonitorFactory
from tests.fixtures_relay import StartRelay, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
ADMIN = "admin-token-0123456789"
ACME = "acme-token-0123456789"

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


@pytest.mark.timeout(120)
async def test_the_tenant_selector_narrows_the_page(
    monitor_server: MonitorFactory,
    browser: Browser,
    asyncpg_conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    settings: Settings,
    start_relay: StartRelay,
) -> None:
    keys = Keys.for_settings(settings)
    acme = keys.for_tenant("acme").stream("assets")
    globex = keys.for_tenant("globex").stream("assets")
    async with asyncpg_conn.transaction():
        for tenant in ("acme", "globex"):
            await outbox.emit(
                asyncpg_conn, service="assets", event_type="scanned", data={}, tenant_id=tenant
            )

    async def published() -> bool:
        return [await redis_client.xlen(acme), await redis_client.xlen(globex)] == [1, 1]

    # Stopping, the relay commits its cursors with the marks that name the tenants' streams.
    async with start_relay(tenant_streams="assets"):
        await wait_until(published, what="the tenants' streams published")
    await redis_client.xgroup_create(acme, "billing", "0")
    await redis_client.xgroup_create(globex, "billing", "0")

    tokens = SecretStr(f"acme:{ACME},globex:globex-token-0123456789")
    async with monitor_server(
        tenant_streams="assets", monitor_admin_token=SecretStr(ADMIN), monitor_tenant_tokens=tokens
    ) as live:
        page = await browser.new_page(viewport={"width": 1400, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(live.url + "/")
        streams = page.locator("#table-streams tbody")

        await page.fill("#token", ADMIN)
        await page.locator("#token").dispatch_event("change")
        await expect(streams).to_contain_text(acme, timeout=10_000)
        await expect(streams).to_contain_text(globex)
        await expect(page.locator("#tenant option")).to_have_text(["all", "acme", "globex"])

        await page.select_option("#tenant", "acme")
        await expect(streams).not_to_contain_text(globex, timeout=10_000)
        await expect(streams).to_contain_text(acme)
        await expect(page.locator("#connection")).to_have_text("live · tenant acme")
        await page.select_option("#tenant", "")
        await expect(streams).to_contain_text(globex, timeout=10_000)

        # A tenant's token: its own tenant only, whatever the selector says.
        await page.fill("#token", ACME)
        await page.locator("#token").dispatch_event("change")
        await expect(streams).not_to_contain_text(globex, timeout=10_000)
        await expect(streams).to_contain_text(acme)
        assert "globex-token" not in await page.content()
        assert errors == []
