"""``outbox smoke``: the operational smoke test of a running deployment (test-redis-streams.sh).

The checks of the original document's ``test-redis-streams.sh``, against what is configured
(REDIS_STREAMS_URL, the monitor's address): Redis answers; it is configured so that it cannot
lose streams (``maxmemory-policy noeviction``) and keeps them over a restart (AOF); a message
published with the document's client is consumed and acknowledged; one that keeps failing ends
in the dead letters; the monitor's endpoints answer; and how many messages a second one client
publishes and consumes. Everything it writes is under a throwaway key prefix (``smoke-<hex>``),
deleted at the end: the deployment's own streams, groups and dead letters are only read.

Each check ends PASS, WARN (works, but not as production needs it), FAIL or SKIP (could not run
because an earlier check failed). Exit code 1 when one failed (or, with ``--strict``, warned).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from outbox.settings import Settings

Level = Literal["PASS", "WARN", "FAIL", "SKIP"]

#: Messages in flight at once in the throughput figure (one client; its connection pool holds
#: 100 connections by default, redis-py's).
_IN_FLIGHT = 50


@dataclass
class Check:
    name: str
    level: Level
    detail: str


class _Failed(Exception):
    """A check's failure, with the detail a person reads."""


class Smoke:
    """The checks, in order; each appends one or more :class:`Check`."""

    def __init__(self, args: argparse.Namespace) -> None:
        from outbox.settings import get_settings, redact_url

        self.args = args
        self.settings = get_settings()
        self.redis_url = self.settings.redis_url()
        self.shown_redis_url = redact_url(self.redis_url)
        self.monitor_url = _monitor_url(args.monitor_url, self.settings)
        self.prefix = f"smoke-{secrets.token_hex(4)}"
        self.checks: list[Check] = []

    def add(self, name: str, level: Level, detail: str) -> None:
        self.checks.append(Check(name, level, detail))

    async def step(self, name: str, check: Callable[[], Awaitable[tuple[Level, str]]]) -> bool:
        """Run one check; a _Failed or an unexpected error is its FAIL. True unless it failed."""
        try:
            level, detail = await asyncio.wait_for(check(), self.args.timeout * 6)
        except _Failed as error:
            level, detail = "FAIL", str(error)
        except TimeoutError:
            level, detail = "FAIL", f"no answer within {self.args.timeout * 6:g}s"
        except Exception as error:
            level, detail = "FAIL", f"{type(error).__name__}: {error}"
        self.add(name, level, detail)
        return level != "FAIL"

    async def run(self) -> list[Check]:
        from outbox.streams.connection import client_from_url

        redis = client_from_url(
            self.redis_url,
            cluster=self.settings.cluster,
            password=self.settings.redis_password_text(),
            socket_connect_timeout=self.args.timeout,
            socket_timeout=self.args.timeout,
        )
        self.redis = redis
        try:
            if await self.step("redis connectivity", self.connectivity):
                await self.configuration()
                if await self.step("publish/consume/ack", self.round_trip):
                    await self.step("dead letters", self.dead_letters)
                    if self.args.count > 0:
                        await self.step("throughput", self.throughput)
                else:
                    self.add("dead letters", "SKIP", "publish/consume/ack failed")
                await self.cleanup()
            else:
                for name in ("redis eviction", "redis persistence", "publish/consume/ack"):
                    self.add(name, "SKIP", "Redis is not reachable")
        finally:
            await redis.aclose()
        if self.monitor_url is not None:
            await self.monitor()
        return self.checks

    # --- Redis -------------------------------------------------------------------------------

    async def connectivity(self) -> tuple[Level, str]:
        from outbox.errors import ConfigurationError
        from outbox.streams.connection import check_redis_mode

        rtts = []
        for _ in range(5):
            started = time.perf_counter()
            await self.redis.ping()
            rtts.append((time.perf_counter() - started) * 1000)
        try:
            await check_redis_mode(self.settings)
        except ConfigurationError as error:
            raise _Failed(str(error)) from None
        self.nodes = await self._info()
        versions = sorted({info.get("redis_version", "?") for info in self.nodes.values()})
        kind = (
            f"cluster of {len(self.nodes)} primaries"
            if self.settings.cluster
            else ("via Sentinel" if "sentinel" in self.redis_url.split("://")[0] else "standalone")
        )
        roles = {node: info.get("role") for node, info in self.nodes.items()}
        if any(role not in (None, "master") for role in roles.values()):
            raise _Failed(f"connected to a replica ({roles}): it cannot take writes")
        rtt = sorted(rtts)[len(rtts) // 2]
        return "PASS", (
            f"PONG from {self.shown_redis_url} in {rtt:.2f} ms "
            f"(Redis {', '.join(versions)}, {kind})"
        )

    async def _info(self) -> dict[str, dict[str, str]]:
        """INFO of each primary (one on a single Redis), parsed. INFO, unlike CONFIG GET, is
        allowed on managed Redis services and to users without admin rights."""
        from redis.asyncio.cluster import RedisCluster

        from outbox.monitor.redis_stats import parse_info
        from outbox.streams.cluster import on_each_primary
        from outbox.streams.connection import raw_pipeline, reply_text

        if isinstance(self.redis, RedisCluster):
            replies = await on_each_primary(self.redis, [("INFO", "everything")])
            nodes: dict[str, dict[str, str]] = {}
            for node, reply in replies.items():
                if isinstance(reply, BaseException):
                    raise _Failed(f"primary {node} does not answer: {reply}")
                nodes[node] = parse_info(reply_text(reply[0]))
            return nodes
        (info,) = await raw_pipeline(self.redis, [("INFO", "everything")], raise_on_error=True)
        return {self.shown_redis_url: parse_info(reply_text(info))}

    async def configuration(self) -> None:
        """maxmemory-policy and persistence, on every primary."""
        evicting = {
            node: info.get("maxmemory_policy", "?")
            for node, info in self.nodes.items()
            if info.get("maxmemory_policy") != "noeviction"
        }
        if not evicting:
            limits = {info.get("maxmemory_human", "?") for info in self.nodes.values()}
            self.add(
                "redis eviction",
                "PASS",
                f"maxmemory-policy noeviction (maxmemory {', '.join(sorted(limits))}; 0B is no "
                "limit): a full Redis refuses writes instead of dropping streams",
            )
        else:
            where = ", ".join(f"{policy} on {node}" for node, policy in evicting.items())
            self.add(
                "redis eviction",
                "FAIL",
                f"maxmemory-policy {where}: a full Redis evicts keys, and an evicted stream "
                "loses its events and its consumer groups; set maxmemory-policy noeviction "
                "(deploy/redis.conf)",
            )
        broken = {
            node: name
            for node, info in self.nodes.items()
            for name in ("aof_last_write_status", "rdb_last_bgsave_status")
            if info.get(name, "ok") != "ok"
        }
        without_aof = [node for node, info in self.nodes.items() if info.get("aof_enabled") != "1"]
        if broken:
            where = ", ".join(f"{name}=err on {node}" for node, name in broken.items())
            self.add("redis persistence", "FAIL", f"Redis cannot write to disk: {where}")
        elif without_aof:
            self.add(
                "redis persistence",
                "WARN",
                f"appendonly no on {', '.join(without_aof)}: a restart loses what Redis took "
                "since its last snapshot. The relay publishes lost outbox events again, but "
                "messages published directly (RedisStreamsClient) and consumer-group progress "
                "are gone; production needs appendonly yes (deploy/redis.conf)",
            )
        else:
            self.add("redis persistence", "PASS", "AOF on (appendonly yes) on every primary")

    def _client(self, **options: Any) -> Any:
        from outbox.streams import RedisStreamsClient

        return RedisStreamsClient(
            self.redis_url, self.settings.redis_password_text() or "", prefix=self.prefix, **options
        )

    async def round_trip(self) -> tuple[Level, str]:
        from outbox.envelope import MessagePriority
        from outbox.streams import publish_event

        async with self._client() as client:
            correlation = f"smoke-{secrets.token_hex(8)}"
            started = time.perf_counter()
            normal = await publish_event(
                client, "identity", "smoke_test", {"n": 1}, correlation_id=correlation
            )
            critical = await publish_event(
                client,
                "identity",
                "smoke_test",
                {"n": 2},
                priority=MessagePriority.CRITICAL,
                correlation_id=correlation,
            )
            messages = await client.consume_messages(
                ["identity"], "smoke-consumer", block_time=int(self.args.timeout * 1000)
            )
            got = [(m.id, m.priority, m.correlation_id) for m in messages]
            want = [
                (critical, MessagePriority.CRITICAL, correlation),
                (normal, MessagePriority.NORMAL, correlation),
            ]
            if got != want:
                raise _Failed(f"published {want}, consumed {got}")
            for message in messages:
                if not await client.acknowledge_message(
                    "identity", "identity_processors", message.id
                ):
                    raise _Failed(f"XACK of {message.id} found nothing pending")
            elapsed_ms = (time.perf_counter() - started) * 1000
            pending = await client.get_pending_messages("identity", "identity_processors")
            if pending:
                raise _Failed(f"{len(pending)} messages still pending after their XACK")
        return "PASS", (
            f"2 messages (CRITICAL first, then NORMAL) published, consumed and acked in "
            f"{elapsed_ms:.1f} ms; nothing left pending"
        )

    async def dead_letters(self) -> tuple[Level, str]:
        from outbox.streams import publish_event
        from outbox.streams.dead_letter import DeadLetters

        async with self._client(max_retries=1) as client:
            entry = await publish_event(client, "assets", "smoke_failing", {"n": 1})
            deliveries = 0
            deadline = time.monotonic() + self.args.timeout * 5
            while time.monotonic() < deadline:
                messages = await client.consume_messages(
                    ["assets"], "smoke-consumer", block_time=int(self.args.timeout * 1000)
                )
                for message in messages:
                    deliveries += 1
                    if not await client.retry_message(message):
                        break  # its retries used up: dead-lettered
                else:
                    continue
                break
            letters = await DeadLetters(client.redis, client.keys, 3600).select()
            mine = [letter for letter in letters if letter.entry_id == entry]
            if not mine:
                raise _Failed(
                    f"after {deliveries} failed deliveries the message is not in "
                    f"{client.keys.dead_letter}"
                )
            pending = await client.get_pending_messages("assets", "assets_processors")
            if pending:
                raise _Failed("the dead-lettered message is still pending in its group")
            letter = mine[0]
        return "PASS", (
            f"a message that failed {deliveries} times (max_retries 1) went to the dead "
            f"letters with its error ({letter.error!r}) and was acked"
        )

    async def throughput(self) -> tuple[Level, str]:
        from outbox.streams import publish_event

        count = self.args.count
        async with self._client() as client:
            started = time.perf_counter()
            for first in range(0, count, _IN_FLIGHT):
                await asyncio.gather(
                    *(
                        publish_event(client, "network", "smoke_load", {"n": n})
                        for n in range(first, min(count, first + _IN_FLIGHT))
                    )
                )
            published_s = time.perf_counter() - started
            started = time.perf_counter()
            done = 0
            while done < count:
                messages = await client.consume_messages(
                    ["network"],
                    "smoke-consumer",
                    batch_size=500,
                    block_time=int(self.args.timeout * 1000),
                )
                if not messages:
                    raise _Failed(f"consumed {done} of {count} messages, then nothing came")
                for first in range(0, len(messages), _IN_FLIGHT):
                    await asyncio.gather(
                        *(
                            client.acknowledge_message("network", "network_processors", m.id)
                            for m in messages[first : first + _IN_FLIGHT]
                        )
                    )
                done += len(messages)
            consumed_s = time.perf_counter() - started
        return "PASS", (
            f"{count} messages published in {published_s:.2f} s ({count / published_s:,.0f}/s, "
            f"{_IN_FLIGHT} in flight), consumed and acked in {consumed_s:.2f} s "
            f"({count / consumed_s:,.0f}/s)"
        )

    async def cleanup(self) -> None:
        """Delete every key of the throwaway prefix (each key alone: a cluster spreads them)."""
        try:
            keys = [key async for key in self.redis.scan_iter(match=f"*{self.prefix}*")]
            for key in keys:
                await self.redis.delete(key)
        except Exception as error:
            self.add(
                "cleanup",
                "WARN",
                f"could not delete the keys of {self.prefix}: {type(error).__name__}: {error}",
            )

    # --- the monitor -------------------------------------------------------------------------

    async def monitor(self) -> None:
        assert self.monitor_url is not None
        base = self.monitor_url
        paths = ("health", "ready", "api/status", "api/streams", "metrics")
        answers: dict[str, tuple[int, bytes] | str] = {}
        for path in paths:
            answers[path] = await asyncio.to_thread(_get, base + path, self.args.timeout)
            if path == "health" and isinstance(answers[path], str):
                self.add("monitor /health", "FAIL", f"GET {base}health: {answers[path]}")
                for other in paths[1:]:
                    self.add(f"monitor /{other}", "SKIP", "the monitor does not answer")
                return

        def body(path: str) -> tuple[int, bytes]:
            answer = answers[path]
            if isinstance(answer, str):
                raise _Failed(f"GET {base}{path}: {answer}")
            return answer

        def check(path: str, verdict: Callable[[int, bytes], tuple[Level, str]]) -> None:
            try:
                level, detail = verdict(*body(path))
            except _Failed as error:
                level, detail = "FAIL", str(error)
            except ValueError as error:  # not the JSON it should be
                level, detail = "FAIL", f"GET {base}{path}: unexpected answer: {error}"
            self.add(f"monitor /{path}", level, detail)

        def health(code: int, text: bytes) -> tuple[Level, str]:
            answer = json.loads(text)
            if code != 200 or answer.get("status") != "ok":
                raise _Failed(f"HTTP {code}: {text[:200]!r}")
            return "PASS", f"up for {answer.get('uptime_s', 0):.0f} s"

        def ready(code: int, text: bytes) -> tuple[Level, str]:
            answer = json.loads(text)
            parts = ", ".join(f"{k} {v}" for k, v in answer.items() if k != "ready")
            if code != 200 or not answer.get("ready"):
                raise _Failed(f"not ready (HTTP {code}): {parts}")
            return "PASS", parts

        def status(code: int, text: bytes) -> tuple[Level, str]:
            if code != 200:
                raise _Failed(f"HTTP {code}: {text[:200]!r}")
            answer = json.loads(text)
            overall = answer["overall"]["level"]
            bad = [c for c in answer["components"] if c["level"] != "OK"]
            shown = "; ".join(f"{c['component']} {c['level']}: {c['reason']}" for c in bad[:5])
            more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
            counted = f"{len(answer['components'])} components"
            if overall == "OK":
                return "PASS", f"overall OK ({answer['overall']['reason']}), {counted}"
            level: Level = "FAIL" if overall == "ERR" else "WARN"
            return level, f"overall {overall}, {counted}: {shown}{more}"

        def streams(code: int, text: bytes) -> tuple[Level, str]:
            if code != 200:
                raise _Failed(f"HTTP {code}: {text[:200]!r}")
            answer = json.loads(text)
            entries = sum(s.get("length", 0) for s in answer)
            return "PASS", f"{len(answer)} streams, {entries} entries"

        def metrics(code: int, text: bytes) -> tuple[Level, str]:
            lines = text.decode(errors="replace").splitlines()
            samples = [line for line in lines if line and not line.startswith("#")]
            names = {line.split("{")[0].split(" ")[0] for line in samples}
            ours = sorted(name for name in names if name.startswith("outbox_"))
            if code != 200 or not ours:
                raise _Failed(f"HTTP {code}, {len(samples)} samples, none named outbox_*")
            return "PASS", f"{len(samples)} samples of {len(names)} metrics ({len(ours)} outbox_*)"

        check("health", health)
        check("ready", ready)
        check("api/status", status)
        check("api/streams", streams)
        check("metrics", metrics)


def _monitor_url(given: str | None, settings: Settings) -> str | None:
    if given == "":
        return None
    if given:
        return given if given.endswith("/") else given + "/"
    return settings.monitor_url()


def _get(url: str, timeout_s: float) -> tuple[int, bytes] | str:
    """(status, body) of a GET, or why there was no answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())
    except (OSError, urllib.error.URLError) as error:
        reason = getattr(error, "reason", error)
        return f"no answer ({reason}); is the monitor running (`outbox monitor`)?"


def _print_table(smoke: Smoke, checks: list[Check]) -> None:
    monitor = smoke.monitor_url or "not checked"
    print(f"smoke test of {smoke.shown_redis_url} (monitor: {monitor})")
    width = max(len(check.name) for check in checks)
    for check in checks:
        print(f"  {check.level:<5} {check.name:<{width}}  {check.detail}")


def run(args: argparse.Namespace) -> int:
    from outbox.cli import eventloop

    if args.count < 0 or args.timeout <= 0:
        print("outbox smoke: --count must be ≥ 0 and --timeout > 0", file=sys.stderr)
        return 2
    if not args.verbose:
        # The client's own lines (groups created, the dead letter this test causes) are not news.
        logging.getLogger("outbox.streams").setLevel(logging.ERROR)
    smoke = Smoke(args)
    checks = eventloop.run(smoke.run())
    tally = {level: sum(c.level == level for c in checks) for level in ("PASS", "WARN", "FAIL")}
    failed = tally["FAIL"] > 0 or (args.strict and tally["WARN"] > 0)
    if args.json:
        print(json.dumps({"checks": [asdict(c) for c in checks], "ok": not failed}, indent=2))
    else:
        _print_table(smoke, checks)
        skipped = len(checks) - sum(tally.values())
        print(
            f"summary: {tally['PASS']} passed, {tally['WARN']} warnings, {tally['FAIL']} failed"
            + (f", {skipped} skipped" if skipped else "")
            + (" (--strict: warnings fail)" if args.strict and tally["WARN"] else "")
        )
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    smoke = sub.add_parser(
        "smoke",
        help="smoke-test a running deployment: Redis, its configuration, the client, the monitor",
        description="Check Redis (reachable; maxmemory-policy noeviction; AOF), publish, consume "
        "and acknowledge with RedisStreamsClient, send a failing message to the dead letters, "
        "measure a short throughput figure (all under a throwaway key prefix, deleted "
        "afterwards) and query the monitor's endpoints. Prints one line per check and a "
        "summary; exit code 1 when a check failed. ./test-redis-streams.sh runs it.",
    )
    smoke.add_argument(
        "--monitor-url",
        metavar="URL",
        help="the monitor to check (default: http://MONITOR_HOST:MONITOR_PORT/; '' skips it)",
    )
    smoke.add_argument(
        "--count",
        type=int,
        default=1000,
        help="messages in the throughput figure (default: 1000; 0 skips it)",
    )
    smoke.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for each answer (default: 5)"
    )
    smoke.add_argument("--strict", action="store_true", help="warnings fail too (exit code 1)")
    smoke.add_argument("--json", action="store_true", help="print the results as JSON")
    smoke.set_defaults(handler=run)
