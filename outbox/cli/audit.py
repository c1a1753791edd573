"""Subcommand ``outbox audit list``, and how the other commands record what they do.

Every administrative command records itself in the audit log (outbox/audit.py) as the OS user
that runs it, from this host.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg

    from outbox.audit import Actor
    from outbox.settings import Settings


@dataclass
class CommandAudit:
    """The audit log as one command writes it: its connection, schema and actor."""

    conn: asyncpg.Connection
    schema: str
    actor: Actor

    async def record(
        self,
        action: str,
        *,
        target: str | None = None,
        counts: dict[str, int] | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        from outbox import audit

        return await audit.record(
            self.conn,
            action,
            self.actor,
            target=target,
            counts=counts,
            details=details,
            schema=self.schema,
        )

    async def record_failure(
        self,
        action: str,
        error: BaseException,
        *,
        target: str | None = None,
        counts: dict[str, int] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record an action that failed with what it did; the action's own error is what the
        command reports, so a row that cannot be written is said on stderr, not raised."""
        from outbox.audit import AuditError

        failed = {**(details or {}), "error": f"{error.__class__.__name__}: {error}"}
        try:
            await self.record(action, target=target, counts=counts, details=failed)
        except AuditError as not_recorded:
            print(f"outbox: {not_recorded}", file=sys.stderr)


@asynccontextmanager
async def command_audit(settings: Settings) -> AsyncIterator[CommandAudit]:
    """Connect to the audit log before the command acts (AuditError, nothing done, when
    PostgreSQL cannot be reached)."""
    from outbox import audit

    conn = await audit.connect(settings.libpq_url())
    try:
        yield CommandAudit(conn, settings.outbox_schema, audit.cli_actor())
    finally:
        await conn.close()


def _list(args: argparse.Namespace) -> int:
    async def main() -> int:
        from outbox import audit
        from outbox.settings import get_settings

        settings = get_settings()
        conn = await audit.connect(settings.libpq_url())
        try:
            entries = await audit.recent(
                conn,
                limit=args.limit,
                action=args.action,
                since_s=args.since,
                schema=settings.outbox_schema,
            )
        finally:
            await conn.close()
        for entry in entries:
            if args.json:
                print(json.dumps(entry.as_dict(), ensure_ascii=False))
                continue
            counts = " ".join(f"{k}={v}" for k, v in entry.counts.items())
            stage = entry.details.get("stage")
            print(
                f"{entry.at.isoformat(timespec='seconds')}\t{entry.via}:{entry.actor}@"
                f"{entry.host or '-'}\t{entry.action}{f' ({stage})' if stage else ''}\t"
                f"{entry.target or '-'}\t{counts}"
            )
        if not args.json:
            print(f"{len(entries)} audit record(s)", file=sys.stderr)
        return 0

    from outbox.cli import eventloop

    return eventloop.run(main())


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this area's subcommands to the ``outbox`` parser."""
    from outbox.cli.projections import duration_s

    audit = sub.add_parser(
        "audit",
        help="the audit log: who replayed, purged, rebuilt, pruned or repartitioned what",
        description="Every administrative action (dead-letter replay and purge from the CLI or "
        "the dashboard, rebuild, prune, prune-inbox, partitions set, forget-marks, grant) is "
        "recorded, append-only, in OUTBOX_SCHEMA.outbox_audit (docs/operations.md, Audit log).",
    )
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the newest records first")
    listing.add_argument("--limit", type=int, default=50, help="at most N records (default 50)")
    listing.add_argument(
        "--action", help="one action (dlq.replay, prune, …) or a prefix of dotted ones (dlq)"
    )
    listing.add_argument(
        "--since", type=duration_s, metavar="DURATION", help="no older than (90s, 2h, 7d)"
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=_list)
