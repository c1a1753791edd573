"""``outbox`` — the command line of opsconductor-outbox.

Each subcommand imports its package only when run, so ``outbox migrate`` does not load Redis or
FastAPI. Errors of the project (``OutboxError``) and unreachable services print one clear line and
exit 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from outbox._version import __version__

Handler = Callable[[argparse.Namespace], int]


def _migrate(args: argparse.Namespace) -> int:
    from outbox.migrations import runner
    from outbox.settings import get_settings

    if args.create_database and not args.sql:
        runner.ensure_database(get_settings().libpq_url())
    if args.sql:
        runner.upgrade(revision=args.revision, sql=True)
    else:
        runner.upgrade(revision=args.revision)
        logging.getLogger("outbox.cli").info("event=migrated revision=%s", args.revision)
    return 0


def _read_settings() -> None:
    """A command reads the environment and ``.env`` of its working directory (a library never
    reads ``.env``), and what it emits (``outbox demo``) and migrates uses the same schema."""
    from outbox.settings import configure, get_settings, use_env_file

    use_env_file(".env")
    settings = get_settings()
    configure(
        schema=settings.outbox_schema,
        max_payload_bytes=settings.max_payload_bytes,
        stream_prefix=settings.stream_prefix,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outbox",
        description="Transactional outbox for PostgreSQL, relayed to Redis Streams. "
        "Configuration comes from the environment (see README, Configuration).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    migrate = sub.add_parser(
        "migrate",
        help="bring the database (DATABASE_URL) to the latest outbox schema",
        description="Apply the outbox migrations (same as `alembic upgrade head`). Safe to run "
        "concurrently and repeatedly.",
    )
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
    migrate.add_argument(
        "--sql", action="store_true", help="print the SQL instead of running it (offline mode)"
    )
    migrate.add_argument(
        "--no-create-database",
        dest="create_database",
        action="store_false",
        help="fail instead of creating the database when it does not exist",
    )
    migrate.set_defaults(handler=_migrate)

    # Each area registers its own subcommands (handlers import their package lazily).
    from outbox.cli import check as check_commands
    from outbox.cli import demo as demo_commands
    from outbox.cli import monitor as monitor_commands
    from outbox.cli import projections as projections_commands
    from outbox.cli import relay as relay_commands

    check_commands.register(sub)
    relay_commands.register(sub)
    projections_commands.register(sub)
    monitor_commands.register(sub)
    demo_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    from outbox.cli.errors import report_failure

    handler: Handler = args.handler
    try:
        _read_settings()
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        code = report_failure(error)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
