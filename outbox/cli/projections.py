"""Subcommands ``outbox project``, ``outbox dlq …`` and ``outbox projections …``."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from outbox.cli.audit import CommandAudit

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d`` → seconds."""
    match = _DURATION.match(text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90s, 15m, 2h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _run(coro: Callable[[], Coroutine[Any, Any, int]]) -> int:
    from outbox.cli import eventloop

    return eventloop.run(coro())


# --- outbox project ---


def _project(args: argparse.Namespace) -> int:
    from outbox.cli import eventloop
    from outbox.cli.heap import settle_for_batches
    from outbox.errors import ConfigurationError
    from outbox.preflight import require_current_schema
    from outbox.probes import with_probes
    from outbox.projections import queries
    from outbox.projections.projection import load, select
    from outbox.projections.runner import ProjectionsProbe, run_projections
    from outbox.settings import get_settings
    from outbox.streams.connection import check_redis_mode

    settings = get_settings()
    eventloop.run(
        require_current_schema(
            settings.libpq_url(),
            {"projection consumer": queries.STATEMENTS},
            schema=settings.outbox_schema,
        )
    )
    eventloop.run(check_redis_mode(settings))
    load(settings.projection_modules)
    projections = select(args.names)
    settle_for_batches()
    probe = ProjectionsProbe.for_settings(settings)
    port = args.metrics_port if args.metrics_port is not None else settings.projection_metrics_port
    if port is not None and not 0 <= port <= 65535:
        raise ConfigurationError(f"--metrics-port {port}: a port is 0-65535")
    return _run(
        lambda: with_probes(
            probe,
            settings.metrics_host,
            port,
            run_projections(
                projections,
                settings,
                workers=args.workers,
                consumer_stem=args.consumer_name,
                handle_signals=True,
                probe=probe,
            ),
        )
    )


# --- outbox projections ---


def _progress_bar(done: int, total: int, started: float) -> None:
    width = 30
    share = done / total if total else 1.0
    filled = int(width * share)
    rate = done / max(time.monotonic() - started, 1e-6)
    sys.stderr.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} events {rate:,.0f}/s"
    )
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _confirmed(action: str, yes: bool) -> bool:
    """True with --yes, or when a person at a terminal answers y; else say how to confirm."""
    if yes:
        return True
    if sys.stdin.isatty():
        return input(f"{action}. Continue? [y/N] ").strip().lower() in ("y", "yes")
    print(f"outbox: {action}; pass --yes to confirm", file=sys.stderr)
    return False


def _rebuild(args: argparse.Namespace) -> int:
    async def main() -> int:
        import asyncpg

        from outbox.audit import cli_actor
        from outbox.projections.projection import load, select
        from outbox.projections.rebuild import rebuild
        from outbox.projections.tenants import TenantView
        from outbox.settings import get_settings
        from outbox.streams.connection import connect
        from outbox.streams.dead_letter import DeadLetters
        from outbox.streams.keys import Keys

        settings = get_settings()
        load(settings.projection_modules)
        (projection,) = select([args.name])
        if not _confirmed(
            f"rebuild {projection.name}: empty {', '.join(projection.tables) or 'its read model'} "
            "and its inbox, then replay the outbox log",
            args.yes,
        ):
            return 2
        keys = Keys.for_settings(settings)
        password = settings.redis_password.get_secret_value() if settings.redis_password else None
        redis = await connect(settings.redis_url(), password, cluster=settings.cluster)
        db = await asyncpg.connect(settings.libpq_url())
        started = time.monotonic()
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if done >= total or now - last[0] > 0.2:
                last[0] = now
                _progress_bar(done, total, started)

        try:
            result = await rebuild(
                db,
                projection,
                keys,
                progress=None if args.quiet else progress,
                letters=DeadLetters(redis, keys, settings.dead_letter_ttl_s),
                schema=settings.outbox_schema,
                actor=cli_actor(),
                tenants=TenantView.for_settings(settings),
            )
        finally:
            await db.close()
            await redis.aclose()
        print(
            f"rebuilt {projection.name}: {result.events} events replayed, {result.applied} "
            f"applied, {result.skipped} skipped, {result.failed} failed (dead-lettered), "
            f"through outbox position {result.through_position}"
        )
        return 1 if result.failed else 0

    return _run(main)


def _list_projections(args: argparse.Namespace) -> int:
    from outbox.projections.projection import load
    from outbox.settings import get_settings

    registered = load(get_settings().projection_modules)
    for name, projection in sorted(registered.items()):
        types = ", ".join(sorted(projection.event_types))
        print(f"{name}\tstreams={','.join(projection.streams)}\thandles={types}")
    if not registered:
        print(
            "no projections: PROJECTION_MODULES names no module that registers one", file=sys.stderr
        )
    return 0


def _prune_inbox(args: argparse.Namespace) -> int:
    async def main() -> int:
        from outbox.cli.audit import command_audit
        from outbox.projections.store import prune_inbox
        from outbox.settings import get_settings

        settings = get_settings()
        retention = {"retention_s": settings.inbox_retention_s}
        async with command_audit(settings) as audit:
            # prune_inbox deletes in bounded batches, each its own statement: a started row
            # first, so that even a killed run is on record.
            await audit.record(
                "projections.prune-inbox", counts={}, details={"stage": "started", **retention}
            )
            try:
                deleted = await prune_inbox(
                    audit.conn, settings.inbox_retention_s, schema=settings.outbox_schema
                )
            except Exception as error:
                await audit.record_failure(
                    "projections.prune-inbox", error, details={"stage": "failed", **retention}
                )
                raise
            await audit.record(
                "projections.prune-inbox",
                counts={"deleted": deleted},
                details={"stage": "finished", **retention},
            )
        print(f"pruned {deleted} inbox rows older than {settings.inbox_retention_s} s")
        return 0

    return _run(main)


# --- outbox dlq ---


def _filter(args: argparse.Namespace) -> Any:
    from outbox.streams.dead_letter import DeadLetterFilter

    return DeadLetterFilter(
        stream=args.stream,
        group=args.group,
        event_type=args.event_type,
        older_than_s=args.older_than,
        newer_than_s=args.newer_than,
    )


def _has_filter(args: argparse.Namespace) -> bool:
    return any(
        value is not None
        for value in (args.stream, args.group, args.event_type, args.older_than, args.newer_than)
    )


def _with_dead_letters(args: argparse.Namespace, action: Callable[[Any], Awaitable[int]]) -> int:
    return _run(lambda: _with_dead_letters_async(args, action))


def _with_audited_dead_letters(
    args: argparse.Namespace, action: Callable[[Any, CommandAudit], Awaitable[int]]
) -> int:
    """Like :func:`_with_dead_letters`, with the audit log connected first: when it cannot be
    reached the command stops before it changes anything."""

    async def main() -> int:
        from outbox.cli.audit import command_audit
        from outbox.settings import get_settings

        async with command_audit(get_settings()) as audit:
            return await _with_dead_letters_async(args, lambda letters: action(letters, audit))

    return _run(main)


async def _with_dead_letters_async(
    args: argparse.Namespace, action: Callable[[Any], Awaitable[int]]
) -> int:
    from outbox.settings import get_settings
    from outbox.streams.connection import connect
    from outbox.streams.dead_letter import DeadLetters
    from outbox.streams.keys import Keys

    settings = get_settings()
    keys = Keys.for_settings(settings)
    tenant = _tenant(args, settings)
    if tenant is not None:
        keys = keys.for_tenant(tenant)
    redis = await connect(
        settings.redis_url(), settings.redis_password_text(), cluster=settings.cluster
    )
    try:
        return await action(DeadLetters(redis, keys, settings.dead_letter_ttl_s))
    finally:
        await redis.aclose()


def _tenant(args: argparse.Namespace, settings: Any) -> str | None:
    """The tenant whose dead letters the command works on: ``--tenant``, else TENANT_ID, else
    none (the deployment's dead letters; never a tenant's)."""
    from outbox.validation import check_tenant_id

    tenant = getattr(args, "tenant", None)
    if tenant is None:
        return settings.tenant_id  # type: ignore[no-any-return]
    return check_tenant_id(tenant)  # a bad id: InvalidNameError, one line and exit 2


def _selection(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The audit target and details of a replay or purge: the ids, or the filter."""
    where = {
        name: getattr(args, name)
        for name in ("stream", "group", "event_type", "older_than", "newer_than")
        if getattr(args, name) is not None
    }
    tenant = {"tenant": args.tenant} if getattr(args, "tenant", None) else {}
    if args.id:
        return "ids", {"ids": list(args.id)[:100], **tenant}
    return ("all" if args.all and not where else "filter"), {"filter": where, **tenant}


def _dlq_list(args: argparse.Namespace) -> int:
    async def action(letters: Any) -> int:
        found = await letters.select(_filter(args))
        for letter in found[-args.limit :] if args.limit else found:
            if args.json:
                print(json.dumps(letter.as_dict(), ensure_ascii=False))
            else:
                print(
                    f"{letter.id}\t{letter.source_stream}\t{letter.group}\t{letter.event_type}\t"
                    f"attempts={letter.attempts}\tage={letter.age_s:.0f}s\t{letter.error[:120]}"
                )
        print(f"{len(found)} dead letter(s)", file=sys.stderr)
        return 0

    return _with_dead_letters(args, action)


def _dlq_show(args: argparse.Namespace) -> int:
    async def action(letters: Any) -> int:
        letter = await letters.get(args.id)
        if letter is None:
            print(f"outbox: no dead letter {args.id}", file=sys.stderr)
            return 1
        print(json.dumps(letter.as_dict(), indent=2, ensure_ascii=False))
        return 0

    return _with_dead_letters(args, action)


@dataclass
class _Chosen:
    """The dead letters a replay or purge acts on; ``missing`` counts given ids that are not
    dead letters (already replayed or purged, or mistyped): the command then exits 1."""

    letters: list[Any]
    missing: int = 0

    def exit_code(self) -> int:
        return 1 if self.missing else 0


async def _chosen(letters: Any, args: argparse.Namespace) -> _Chosen | None:
    if args.id:
        found = [letter for letter in [await letters.get(i) for i in args.id] if letter]
        missing = len(args.id) - len(found)
        if missing:
            print(f"outbox: {missing} of the given ids are not dead letters", file=sys.stderr)
        return _Chosen(found, missing)
    if not _has_filter(args) and not args.all:
        print(
            "outbox: give dead-letter ids, a filter (--stream/--group/--event-type/--older-than/"
            "--newer-than) or --all",
            file=sys.stderr,
        )
        return None
    return _Chosen(list(await letters.select(_filter(args))))


def _dlq_replay(args: argparse.Namespace) -> int:
    async def action(letters: Any, audit: CommandAudit) -> int:
        chosen = await _chosen(letters, args)
        if chosen is None:
            return 2
        print(f"{len(chosen.letters)} dead letter(s) to replay", file=sys.stderr)
        if len(chosen.letters) > 1 and not args.yes:
            print("outbox: add --yes to replay them", file=sys.stderr)
            return 1
        target, details = _selection(args)
        details["keep"] = args.keep
        new_ids: list[str] = []

        def counts() -> dict[str, int]:
            return {
                "selected": len(chosen.letters),
                "replayed": len(new_ids),
                "missing": chosen.missing,
            }

        # Recorded after Redis acted, with what it did, also when it failed half-way.
        try:
            await letters.replay(chosen.letters, keep=args.keep, into=new_ids)
        except Exception as error:
            await audit.record_failure(
                "dlq.replay", error, target=target, counts=counts(), details=details
            )
            raise
        await audit.record("dlq.replay", target=target, counts=counts(), details=details)
        print(f"replayed {len(new_ids)} dead letter(s) to their source streams")
        return chosen.exit_code()

    return _with_audited_dead_letters(args, action)


def _dlq_purge(args: argparse.Namespace) -> int:
    async def action(letters: Any, audit: CommandAudit) -> int:
        chosen = await _chosen(letters, args)
        if chosen is None:
            return 2
        print(f"{len(chosen.letters)} dead letter(s) to purge", file=sys.stderr)
        if not args.yes:
            print("outbox: add --yes to purge them", file=sys.stderr)
            return 1
        target, details = _selection(args)
        counts = {"selected": len(chosen.letters), "purged": 0, "missing": chosen.missing}
        try:
            counts["purged"] = await letters.delete([letter.id for letter in chosen.letters])
        except Exception as error:
            await audit.record_failure(
                "dlq.purge", error, target=target, counts=counts, details=details
            )
            raise
        await audit.record("dlq.purge", target=target, counts=counts, details=details)
        deleted = counts["purged"]
        print(f"purged {deleted} dead letter(s)")
        return chosen.exit_code()

    return _with_audited_dead_letters(args, action)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stream", help="source service (identity) or stream key")
    parser.add_argument("--group", help="consumer group (projection name)")
    parser.add_argument("--event-type", help="event type, e.g. user_created")
    parser.add_argument("--older-than", type=duration_s, help="dead for at least (90s, 2h, 7d)")
    parser.add_argument("--newer-than", type=duration_s, help="dead for at most (90s, 2h, 7d)")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this area's subcommands to the ``outbox`` parser."""
    project = sub.add_parser(
        "project",
        help="run projections (consumer groups applying events to read models)",
        description="Run the named projections (all registered ones when none is named) with "
        "PROCESSOR_WORKERS consumers each, until SIGTERM/SIGINT.",
    )
    project.add_argument("names", nargs="*", metavar="NAME", help="projection names")
    project.add_argument("--workers", type=int, help="consumers per projection (PROCESSOR_WORKERS)")
    project.add_argument(
        "--consumer-name", help="consumer name stem (PROJECTION_CONSUMER_NAME, default host name)"
    )
    project.add_argument(
        "--metrics-port",
        type=int,
        help="serve /metrics, /health and /ready on this port (0: any free one) "
        "[PROJECTION_METRICS_PORT]",
    )
    project.set_defaults(handler=_project)

    projections = sub.add_parser("projections", help="list, rebuild and maintain projections")
    commands = projections.add_subparsers(dest="projections_command", required=True)
    listing = commands.add_parser("list", help="the registered projections")
    listing.set_defaults(handler=_list_projections)
    rebuild = commands.add_parser(
        "rebuild",
        help="reset a projection's read model and inbox and replay it from the outbox",
        description="Live consumers of the projection pause while it runs and resume after it.",
    )
    rebuild.add_argument("name", metavar="NAME")
    rebuild.add_argument("--quiet", action="store_true", help="no progress bar")
    rebuild.add_argument(
        "--yes", action="store_true", help="do not ask for confirmation (it empties the model)"
    )
    rebuild.set_defaults(handler=_rebuild)
    prune = commands.add_parser("prune-inbox", help="delete inbox rows older than INBOX_RETENTION")
    prune.set_defaults(handler=_prune_inbox)

    dlq = sub.add_parser("dlq", help="list, show, replay and purge dead letters")
    actions = dlq.add_subparsers(dest="dlq_command", required=True)
    tenant = argparse.ArgumentParser(add_help=False)
    tenant.add_argument(
        "--tenant",
        help="a tenant's dead letters (<prefix>:tenant:<TENANT>:…, docs/tenancy.md) instead of "
        "the deployment's; default TENANT_ID",
    )
    dlq_list = actions.add_parser("list", help="list dead letters (oldest first)", parents=[tenant])
    _add_filters(dlq_list)
    dlq_list.add_argument("--limit", type=int, default=0, help="only the newest N")
    dlq_list.add_argument("--json", action="store_true", help="one JSON object per line")
    dlq_list.set_defaults(handler=_dlq_list)
    show = actions.add_parser("show", help="one dead letter in full (JSON)", parents=[tenant])
    show.add_argument("id")
    show.set_defaults(handler=_dlq_show)
    replay = actions.add_parser(
        "replay",
        help="re-add dead letters to their source streams (idempotent: projections skip events "
        "they already applied)",
        parents=[tenant],
    )
    replay.add_argument(
        "id",
        nargs="*",
        help="dead-letter ids (else use filters or --all); the found ones are replayed, and the "
        "command exits 1 if any id is not a dead letter",
    )
    _add_filters(replay)
    replay.add_argument("--all", action="store_true", help="every dead letter")
    replay.add_argument("--yes", action="store_true", help="confirm replaying more than one")
    replay.add_argument("--keep", action="store_true", help="keep the dead letters after replay")
    replay.set_defaults(handler=_dlq_replay)
    purge = actions.add_parser("purge", help="delete dead letters", parents=[tenant])
    purge.add_argument(
        "id",
        nargs="*",
        help="dead-letter ids (else use filters or --all); the found ones are purged, and the "
        "command exits 1 if any id is not a dead letter",
    )
    _add_filters(purge)
    purge.add_argument("--all", action="store_true", help="every dead letter")
    purge.add_argument("--yes", action="store_true", help="confirm")
    purge.set_defaults(handler=_dlq_purge)
