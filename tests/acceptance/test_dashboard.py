"""The dashboard in real headless Chromium (Debian's, driven by Playwright): it loads, its numbers
move when events are emitted, a dead letter's Replay button works, and with a relay and
projections running it shows processing latency, error rates, retries and Redis's hit ratio.
Saves screenshots in tests/acceptance/artifacts/."""

from __future__ import annotations

import re
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
from outbox.projections.projection import Projection
from outbox.settings import Settings
from outbox.streams.codec import StreamMessage, encode_event
from outbox.streams.dead_letter import DeadLetters, dead_letter_fields
from outbox.streams.keys import Keys
from tests.fixtures_browser import CHROMIUM_SKIP_REASON
from tests.fixtures_monitor import MonitorFactory
from tests.fixtures_projections import Runner
from tests.fixtures_relay import StartRelay, emit_events, wait_until

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
        # The replay is in the audit log, under the token's name, never the token.
        audited = page.locator("#table-audit tbody tr", has_text="dlq.replay")
        await expect(audited).to_contain_text("admin", timeout=10_000)
        await expect(audited).to_contain_text("replayed=1")
        assert "dash-token" not in await page.locator("#table-audit").inner_text()

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


#: A duration as the page writes it ("12 ms", "1.4 s").
DURATION = re.compile(r"^\d+(\.\d+)? (ms|s|min|h)$")


@pytest.mark.timeout(120)
async def test_dashboard_shows_processing_latency_errors_retries_and_hit_ratio(
    monitor_server: MonitorFactory,
    browser: Browser,
    start_relay: StartRelay,
    running: Runner,
    projection_settings: Settings,
    asyncpg_conn: asyncpg.Connection,
) -> None:
    # Two projections of the same events: one applies each at once, the other fails the first
    # call of its handler for every third event, which is then retried and applied.
    steady = Projection("steady", streams=["identity"])
    flaky = Projection("flaky", streams=["identity"])
    failed_once: set[str] = set()

    @steady.on("thing_happened")
    async def apply(event: StreamMessage, db: Any) -> None:
        pass

    @flaky.on("thing_happened")
    async def sometimes_fail(event: StreamMessage, db: Any) -> None:
        if event.data["n"] % 3 == 0 and event.event_id not in failed_once:
            failed_once.add(event.event_id)
            raise RuntimeError("transient")

    async with (
        monitor_server() as live,
        start_relay(),
        running([steady, flaky], projection_settings),
    ):
        page = await browser.new_page(viewport={"width": 1400, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(live.url + "/")
        await expect(page.locator("#connection")).to_have_text("live", timeout=10_000)

        async def applied(projection: str, count: int) -> bool:
            snap = (await live.http.get("/api/snapshot")).json()
            rows = [p for p in snap["projections"] if p["name"] == projection]
            return bool(rows) and rows[0]["processed"] >= count

        # Two rounds, so the window holds counters before and after the second one.
        await emit_events(asyncpg_conn, 30, services=("identity",))
        await wait_until(lambda: applied("flaky", 30), what="the first round applied")
        await emit_events(asyncpg_conn, 30, services=("identity",))
        await wait_until(lambda: applied("flaky", 60), what="the second round applied")

        async def window_counted() -> bool:
            snap = (await live.http.get("/api/snapshot")).json()
            rows = {p["name"]: p for p in snap["projections"]}
            window = rows["flaky"]["window"]
            return (
                window is not None
                and window["retries"] > 0
                and rows["steady"]["window"] is not None
                and rows["steady"]["window"]["applied"] > 0
            )

        await wait_until(window_counted, what="the window to count the retries")
        snap = (await live.http.get("/api/snapshot")).json()
        rows = {p["name"]: p for p in snap["projections"]}
        for name in ("steady", "flaky"):
            latency = rows[name]["processing_latency"]
            assert latency is not None, name
            assert latency["events"] == 60, (name, latency)
            assert 0 <= latency["p50_s"] <= latency["p95_s"] <= latency["max_s"] < 30
        # Every failure was retried (the fast path's failure, re-run on the slow path, is not
        # counted: outbox/projections/apply.py).
        assert rows["flaky"]["failures"] == rows["flaky"]["retries"] > 0
        assert rows["flaky"]["dead_lettered"] == 0
        assert rows["steady"]["failures"] == 0
        assert snap["redis"]["hit_ratio"] is not None

        # The projections' rows: p50, p95 and max as durations, the error rate, the retries.
        def cells(name: str) -> Any:
            return page.locator("#table-projections tbody tr", has_text=name).locator("td")

        for name in ("steady", "flaky"):
            for column in (4, 5, 6):
                await expect(cells(name).nth(column)).to_have_text(DURATION, timeout=10_000)
        await expect(cells("steady").nth(7)).to_have_text("0.0 %")
        await expect(cells("flaky").nth(7)).to_have_text(re.compile(r"^[1-9]\d*\.\d %$"))
        await expect(cells("flaky").nth(8)).to_have_text(re.compile(r"^[1-9]\d* \([1-9]\d*\)$"))
        await expect(cells("steady").nth(8)).to_have_text("0 (0)")
        # The cards: the slowest projection's p95, the error rate over the window, Redis's hits.
        await expect(page.locator("#card-latency")).to_have_text(DURATION)
        await expect(page.locator("#card-errors")).to_have_text(re.compile(r"^\d+\.\d %$"))
        await expect(page.locator("#card-errors-sub")).to_contain_text("retried in")
        await expect(page.locator("#card-hit-ratio")).to_have_text(
            re.compile(r"^hit ratio \d+(\.\d+)? % \([\d,]+ hits, [\d,]+ misses\)$")
        )

        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard-processing.png"), full_page=True)
        assert errors == []
