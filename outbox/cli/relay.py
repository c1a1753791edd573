"""Subcommands ``outbox relay``, ``prune``, ``forget-marks``, ``maintain`` and ``partitions``."""

from __future__ import annotations

import argparse
from typing import Any

# (flag, settings field, type, help). Each flag overrides the environment variable in brackets.
_RELAY_FLAGS: list[tuple[str, str, type, str]] = [
    ("--batch-size", "relay_batch_size", int, "events per service per batch [RELAY_BATCH_SIZE]"),
    (
        "--poll-min-ms",
        "relay_poll_min_ms",
        float,
        "first idle wait after an empty poll, doubling while idle [RELAY_POLL_MIN_MS]",
    ),
    (
        "--poll-max-ms",
        "relay_poll_max_ms",
        float,
        "longest idle wait between polls [RELAY_POLL_MAX_MS]",
    ),
    (
        "--notify-channel",
        "relay_notify_channel",
        str,
        "LISTEN channel; pg_notify on it wakes the relay; '' disables [RELAY_NOTIFY_CHANNEL]",
    ),
    (
        "--defer-after-ms",
        "relay_defer_after_ms",
        float,
        "defer write transactions of this database open this long: later events no longer "
        "wait for them; 0 never defers [RELAY_DEFER_AFTER_MS]",
    ),
    (
        "--heartbeat-interval-s",
        "relay_heartbeat_interval_s",
        float,
        "status row and lease rebalancing interval [RELAY_HEARTBEAT_INTERVAL_S]",
    ),
    (
        "--shutdown-grace-s",
        "relay_shutdown_grace_s",
        float,
        "time to finish the batch on SIGTERM/SIGINT [RELAY_SHUTDOWN_GRACE_S]",
    ),
    (
        "--retry-min-s",
        "relay_retry_min_s",
        float,
        "first backoff after a failure [RELAY_RETRY_MIN_S]",
    ),
    (
        "--retry-max-s",
        "relay_retry_max_s",
        float,
        "longest backoff after repeated failures [RELAY_RETRY_MAX_S]",
    ),
    (
        "--trim-interval-s",
        "relay_trim_interval_s",
        float,
        "stream trimming interval; 0 disables trimming [RELAY_TRIM_INTERVAL_S]",
    ),
    (
        "--stream-retention-s",
        "relay_stream_retention_s",
        float,
        "keep entries at least this long even when every group acked them "
        "[RELAY_STREAM_RETENTION_S]",
    ),
    (
        "--metrics-port",
        "relay_metrics_port",
        int,
        "serve /metrics, /health and /ready on this port (0: any free one) [RELAY_METRICS_PORT]",
    ),
    (
        "--instance-id",
        "relay_instance_id",
        str,
        "name in the status row (default <host>-<pid>-<random>) [RELAY_INSTANCE_ID]",
    ),
]


def _relay(args: argparse.Namespace) -> int:
    import signal

    # A stop asked for while the process is still starting (importing, connecting) is kept and
    # honoured once the relay runs, instead of killing it by the default action.
    early: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: early.append(received))

    from pydantic import ValidationError

    from outbox.cli import eventloop
    from outbox.cli.heap import settle_for_batches
    from outbox.errors import ConfigurationError
    from outbox.preflight import require_current_schema
    from outbox.probes import with_probes
    from outbox.relay.cursor import RELAY_STATEMENTS
    from outbox.relay.daemon import Relay, run_until_signalled
    from outbox.settings import get_settings
    from outbox.streams.connection import check_redis_mode

    updates = {
        field: getattr(args, field)
        for _, field, _, _ in _RELAY_FLAGS
        if getattr(args, field) is not None
    }
    if args.no_leases:
        updates["relay_leases"] = False
    settings = get_settings()
    # Validate the overrides like the environment (model_copy alone would not).
    try:
        settings = type(settings).model_validate({**settings.model_dump(), **updates})
    except ValidationError as error:
        raise ConfigurationError(f"invalid relay option: {error}") from None
    eventloop.run(
        require_current_schema(
            settings.libpq_url(),
            {"relay": RELAY_STATEMENTS},
            schema=settings.outbox_schema,
            sees_every_row=True,
        )
    )
    eventloop.run(check_redis_mode(settings))
    relay = Relay.from_settings(settings)
    settle_for_batches()
    eventloop.run(
        with_probes(
            relay,
            settings.metrics_host,
            settings.relay_metrics_port,
            run_until_signalled(relay, stop_requested=lambda: bool(early)),
        )
    )
    return 0


def _prune(args: argparse.Namespace) -> int:
    from outbox.cli import eventloop
    from outbox.errors import ConfigurationError
    from outbox.relay.prune import PruneProgress, parse_duration, prune
    from outbox.settings import get_settings

    try:
        older_than = parse_duration(args.older_than)
    except ValueError as error:
        raise ConfigurationError(str(error)) from None

    def show(progress: PruneProgress) -> None:
        print(
            f"pruned {progress.deleted} events (walked to position {progress.walked_to_position})",
            flush=True,
        )

    from outbox.audit import cli_actor

    settings = get_settings()
    total = eventloop.run(
        prune(
            settings.libpq_url(),
            older_than,
            chunk_size=args.chunk_size,
            progress=show,
            schema=settings.outbox_schema,
            actor=cli_actor(),
        )
    )
    print(f"done: {total.deleted} published events older than {args.older_than} deleted")
    return 0


def _forget_marks(args: argparse.Namespace) -> int:
    from outbox.audit import cli_actor
    from outbox.cli import eventloop
    from outbox.relay.admin import forget_marks
    from outbox.settings import get_settings

    settings = get_settings()
    services = eventloop.run(
        forget_marks(settings.libpq_url(), schema=settings.outbox_schema, actor=cli_actor())
    )
    print(f"forgot the marks of {len(services)} service(s): {', '.join(services) or 'none'}")
    return 0


def _maintain(args: argparse.Namespace) -> int:
    from outbox.cli import eventloop
    from outbox.settings import get_settings

    settings = get_settings()
    return eventloop.run(_maintain_loop(settings, args.every))


async def _maintain_loop(settings: Any, every: float | None) -> int:
    import asyncio
    import signal

    from outbox.relay.maintenance import maintain
    from outbox.streams.connection import connect
    from outbox.streams.keys import Keys

    client = await connect(
        settings.redis_url(), settings.redis_password_text(), cluster=settings.cluster
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        while True:
            result = await maintain(
                client,
                Keys.for_settings(settings),
                retention_s=settings.relay_stream_retention_s,
                dead_letter_ttl_s=settings.dead_letter_ttl_s,
            )
            for trim in result.trimmed:
                if trim.error:
                    print(f"{trim.stream}: not trimmed: {trim.error}", flush=True)
                elif trim.trimmed:
                    print(f"{trim.stream}: trimmed {trim.trimmed} entries (below {trim.minid})")
            removed = sum(t.trimmed for t in result.trimmed)
            print(
                f"done: {len(result.trimmed) - 1} stream(s) and the dead letters checked, "
                f"{removed} entries trimmed, "
                f"{len(result.consumers_forgotten)} silent consumer report(s) forgotten",
                flush=True,
            )
            if every is None:
                return 1 if any(t.error for t in result.trimmed) else 0
            try:
                await asyncio.wait_for(stop.wait(), every)
                return 0
            except TimeoutError:
                continue
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await client.aclose()


def _partitions_set(args: argparse.Namespace) -> int:
    from outbox.audit import cli_actor
    from outbox.cli import eventloop
    from outbox.relay.admin import request_partitions
    from outbox.settings import get_settings

    settings = get_settings()
    found = eventloop.run(
        request_partitions(
            settings.libpq_url(),
            args.service,
            args.partitions,
            schema=settings.outbox_schema,
            actor=cli_actor(),
        )
    )
    if found.requested is None:
        print(f"{args.service} already has {found.partitions} partitions (epoch {found.epoch})")
    else:
        print(
            f"{args.service}: {found.requested} partitions asked for; the relay starts epoch "
            f"{found.epoch + 1} at its next batch, and projections consume it once every "
            "partition before it is drained"
        )
    return 0


def _partitions_list(args: argparse.Namespace) -> int:
    from outbox.cli import eventloop
    from outbox.relay.admin import partitionings
    from outbox.settings import get_settings

    settings = get_settings()
    found = eventloop.run(partitionings(settings.libpq_url(), schema=settings.outbox_schema))
    for service, partitioning in found.items():
        asked = f", {partitioning.requested} asked for" if partitioning.requested else ""
        print(f"{service}\tepoch={partitioning.epoch}\tpartitions={partitioning.routed}{asked}")
    if not found:
        print("no partitioned service (each has its one stream)")
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this area's subcommands to the ``outbox`` parser."""
    relay = sub.add_parser(
        "relay",
        help="run the relay daemon: publish committed outbox events to Redis Streams",
        description="Publish committed outbox events (DATABASE_URL) to Redis Streams "
        "(REDIS_STREAMS_URL) in order, exactly once, sharing services with other relays "
        "through leases. Flags override the environment variables in brackets. SIGTERM or "
        "SIGINT stops it gracefully (the batch in flight is finished and committed).",
    )
    for flag, field, kind, help_text in _RELAY_FLAGS:
        metavar = flag.rsplit("-", 1)[-1].upper() if kind is not str else "NAME"
        relay.add_argument(
            flag, dest=field, type=kind, default=None, metavar=metavar, help=help_text
        )
    relay.add_argument(
        "--no-leases",
        action="store_true",
        help="relay every service without taking leases (testing only; the idempotent "
        "publish still prevents duplicates) [RELAY_LEASES=false]",
    )
    relay.set_defaults(handler=_relay)

    prune = sub.add_parser(
        "prune",
        help="delete published outbox events older than a given age",
        description="Delete outbox rows that the relay has published and that are older than "
        "--older-than, in small chunks (each its own transaction). Unpublished rows are kept.",
    )
    prune.add_argument(
        "--older-than",
        required=True,
        metavar="DURATION",
        help="age such as 30m, 12h, 7d (units s, m, h, d, w)",
    )
    prune.add_argument(
        "--chunk-size", type=int, default=1000, help="rows per delete transaction (default 1000)"
    )
    prune.set_defaults(handler=_prune)

    forget = sub.add_parser(
        "forget-marks",
        help="after moving the streams to another Redis: forget what the old one held",
        description="Clear the relays' marks (what each stream was last seen to hold). Needed "
        "once after the streams moved to another Redis, such as a new Redis Cluster: else the "
        "relays take the empty streams for lost writes and publish every service again from "
        "the start. Refused while a relay runs. See docs/cluster.md.",
    )
    forget.set_defaults(handler=_forget_marks)

    maintain = sub.add_parser(
        "maintain",
        help="trim every stream of the prefix and the dead letters, with Redis only",
        description="Trim every event stream of STREAM_PREFIX found in Redis, also those no "
        "relay publishes for (written by RedisStreamsClient or the original library), with "
        "the relay's rule: never an entry a consumer group has not been delivered or has not "
        "acknowledged, and nothing younger than RELAY_STREAM_RETENTION_S; the dead letters "
        "older than DEAD_LETTER_TTL; and forget the reports of client consumers silent for a "
        "day. Needs no PostgreSQL. Once by default (cron), or every SECONDS until SIGTERM. "
        "Exit code 1 when a stream could not be trimmed (its cluster node down).",
    )
    maintain.add_argument(
        "--every", type=float, metavar="SECONDS", help="repeat at this interval until stopped"
    )
    maintain.set_defaults(handler=_maintain)

    partitions = sub.add_parser(
        "partitions",
        help="partition a service's streams by aggregate, or change its partition count",
        description="A partitioned service's events are spread over N streams by a stable hash "
        "of their aggregate id; each partition of a projection is consumed by one consumer at "
        "a time, so every aggregate's events are applied in order (docs/cluster.md, "
        "decision 0014).",
    )
    actions = partitions.add_subparsers(dest="action", metavar="ACTION", required=True)
    setting = actions.add_parser(
        "set",
        help="ask for N partitions of SERVICE (the relay switches at its next batch)",
        description="Record a new partition count. The relay holding SERVICE starts a new "
        "epoch at its next batch boundary; projections consume the new partitions once every "
        "partition before them is drained, so no aggregate's events are reordered.",
    )
    setting.add_argument("service")
    setting.add_argument("partitions", type=int)
    setting.set_defaults(handler=_partitions_set)
    listing = actions.add_parser("list", help="each partitioned service's epoch and count")
    listing.set_defaults(handler=_partitions_list)
