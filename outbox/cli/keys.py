"""Subcommands ``outbox keys …``: the master keys of encrypted event fields (docs/encryption.md).

- ``keys new``: print a new random key as an ``id:base64`` line (nothing is stored).
- ``keys status``: the configured keys, the active one, and how many values of the outbox log
  each key id wraps (a key still in use there must not be removed).
- ``keys rotate``: re-wrap the data keys of the outbox log under the active key, in batches,
  with progress; recorded in the audit log (``keys.rotate``, started and finished/failed).
- ``keys forget-subject``: delete a subject's key (crypto-shredding), audited.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _provider() -> Any:
    from outbox.errors import ConfigurationError
    from outbox.keyring import key_provider

    provider = key_provider()
    if provider is None:
        raise ConfigurationError(
            "no encryption keys are configured: set OUTBOX_ENCRYPTION_KEYS or "
            "OUTBOX_ENCRYPTION_KEY_FILE (docs/encryption.md)"
        )
    return provider


def _new(args: argparse.Namespace) -> int:
    from outbox.keyring import decode_key, new_key

    key = new_key()
    decode_key(args.id, key)  # the id is checked like a configured one
    print(f"{args.id}:{key}")
    return 0


def _status(args: argparse.Namespace) -> int:
    async def main() -> int:
        import asyncpg

        from outbox.rotation import key_use
        from outbox.settings import get_settings

        settings = get_settings()
        provider = _provider()
        active = provider.active_key_id()
        configured = list(getattr(provider, "key_ids", lambda: [active])())
        conn = await asyncpg.connect(settings.libpq_url())
        try:
            uses = await key_use(conn, schema=settings.outbox_schema)
        finally:
            await conn.close()
        print(f"active key: {active}")
        print(f"configured keys: {', '.join(configured)}")
        missing = 0
        for use in uses:
            here = "configured" if _has(provider, use.key_id) else "NOT CONFIGURED"
            missing += here != "configured"
            print(f"{use.key_id}\t{use.values} value(s) in {use.events} event(s)\t{here}")
        if not uses:
            print("no encrypted values in the outbox log")
        return 1 if missing else 0

    from outbox.cli import eventloop

    return eventloop.run(main())


def _has(provider: Any, key_id: str) -> bool:
    try:
        provider.key(key_id)
    except KeyError:
        return False
    return True


def _rotate(args: argparse.Namespace) -> int:
    from outbox.rotation import RotationCounts

    def show(counts: RotationCounts) -> None:
        print(
            f"scanned {counts.rows_scanned} encrypted events, re-wrapped "
            f"{counts.values_rewrapped} values in {counts.rows_rewrapped} events "
            f"(through position {counts.last_position})",
            flush=True,
        )

    async def main() -> int:
        import asyncpg

        from outbox.cli.audit import command_audit
        from outbox.rotation import rotate
        from outbox.settings import get_settings

        settings = get_settings()
        provider = _provider()
        active = provider.active_key_id()
        target = f"key {active}"
        details: dict[str, Any] = {"key_id": active, "after": args.after, "dry_run": args.dry_run}
        async with command_audit(settings) as audit:
            conn = await asyncpg.connect(
                settings.libpq_url(), server_settings={"application_name": "outbox keys rotate"}
            )
            try:
                if not args.dry_run:
                    await audit.record(
                        "keys.rotate", target=target, details={**details, "stage": "started"}
                    )
                counts = RotationCounts(last_position=args.after)

                def progress(done: RotationCounts) -> None:
                    nonlocal counts
                    counts = done
                    show(done)

                try:
                    counts = await rotate(
                        conn,
                        provider,
                        schema=settings.outbox_schema,
                        batch_size=args.batch_size,
                        after=args.after,
                        dry_run=args.dry_run,
                        progress=progress,
                    )
                except Exception as error:
                    if not args.dry_run:
                        await audit.record_failure(
                            "keys.rotate",
                            error,
                            target=target,
                            counts=counts.as_counts(),
                            details={**details, "stage": "failed"},
                        )
                    print(
                        f"outbox: stopped after position {counts.last_position}; run again (or "
                        f"with --after {counts.last_position}) to resume",
                        file=sys.stderr,
                    )
                    raise
                if not args.dry_run:
                    await audit.record(
                        "keys.rotate",
                        target=target,
                        counts=counts.as_counts(),
                        details={**details, "stage": "finished"},
                    )
            finally:
                await conn.close()
        verb = "would re-wrap" if args.dry_run else "re-wrapped"
        print(
            f"done: {verb} {counts.values_rewrapped} values in {counts.rows_rewrapped} events "
            f"under key {active} ({counts.rows_scanned} encrypted events scanned)"
        )
        if counts.rows_changed_meanwhile:
            print(
                f"{counts.rows_changed_meanwhile} events changed while this ran (another "
                "rotation?): run it again",
                file=sys.stderr,
            )
        if counts.rows_unreadable:
            print(
                f"outbox: {counts.rows_unreadable} events could not be re-wrapped: their key is "
                "not configured here (see the log lines above and `outbox keys status`)",
                file=sys.stderr,
            )
            return 1
        return 0

    from outbox.cli import eventloop

    return eventloop.run(main())


def _forget_subject(args: argparse.Namespace) -> int:
    async def main() -> int:
        from outbox.cli.audit import command_audit
        from outbox.errors import ConfigurationError
        from outbox.keyring import SubjectKeyProvider
        from outbox.settings import get_settings

        provider = _provider()
        if not isinstance(provider, SubjectKeyProvider):
            raise ConfigurationError(
                "the configured key provider keeps no subject keys (OUTBOX_ENCRYPTION_KEY_FILE "
                "naming a directory does)"
            )
        async with command_audit(get_settings()) as audit:
            forgotten = provider.forget_subject(args.subject)
            # The subject itself may be personal data: the audit log names only its key id.
            await audit.record(
                "keys.forget-subject",
                target=forgotten,
                counts={"keys_deleted": int(forgotten is not None)},
            )
        print(
            "deleted the subject's key: its encrypted values can no longer be read"
            if forgotten is not None
            else "the subject had no key (nothing encrypted for it here, or already forgotten)"
        )
        return 0

    from outbox.cli import eventloop

    return eventloop.run(main())


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this area's subcommands to the ``outbox`` parser."""
    keys = sub.add_parser(
        "keys",
        help="encryption keys: make one, see which the log uses, rotate, forget a subject",
        description="Master keys of encrypted event fields (OUTBOX_ENCRYPTION_KEYS or "
        "OUTBOX_ENCRYPTION_KEY_FILE; docs/encryption.md).",
    )
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="print a new random AES-256 key as id:base64")
    new.add_argument("id", help="the new key's id, e.g. k2 or 2026-12")
    new.set_defaults(handler=_new)
    status = actions.add_parser(
        "status", help="the active key and how many encrypted values of the log each key wraps"
    )
    status.set_defaults(handler=_status)
    rotate = actions.add_parser(
        "rotate",
        help="re-wrap the outbox log's data keys under the active key (resumable, audited)",
        description="Re-wrap the data key of every encrypted value in OUTBOX_SCHEMA."
        "outbox_events under the active key, in batches, while the relay runs. Needs the old "
        "keys too. Stream entries and dead letters keep the old wrapping: keep the old keys "
        "until those are trimmed.",
    )
    rotate.add_argument(
        "--batch-size", type=int, default=500, help="events per UPDATE (default 500)"
    )
    rotate.add_argument(
        "--after", type=int, default=0, metavar="POSITION", help="resume after this position"
    )
    rotate.add_argument(
        "--dry-run", action="store_true", help="count what would be re-wrapped, change nothing"
    )
    rotate.set_defaults(handler=_rotate)
    forget = actions.add_parser(
        "forget-subject",
        help="delete a subject's key: its events become unreadable (crypto-shredding, audited)",
    )
    forget.add_argument("subject", help="the subject: the events' aggregate_id")
    forget.set_defaults(handler=_forget_subject)
