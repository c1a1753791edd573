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
from typing import TYPE_CHECKING

from outbox._version import __version__

if TYPE_CHECKING:
    from outbox.settings import Settings

Handler = Callable[[argparse.Namespace], int]


def _migrate(args: argparse.Namespace) -> int:
    from outbox.errors import ConfigurationError
    from outbox.migrations import runner
    from outbox.settings import get_settings

    settings = get_settings()
    log = logging.getLogger("outbox.cli")
    if args.sql and (args.examples or args.stamp):
        raise ConfigurationError("--sql prints the outbox's own migrations only")
    if args.create_database and not args.sql:
        runner.ensure_database(settings.libpq_url())
    if args.stamp:
        runner.stamp(args.stamp)
        log.info("event=stamped revision=%s schema=%s", args.stamp, settings.outbox_schema)
        return 0
    if args.sql:
        runner.upgrade(revision=args.revision, sql=True)
        return 0
    runner.upgrade(revision=args.revision)
    log.info("event=migrated revision=%s schema=%s", args.revision, settings.outbox_schema)
    if args.examples:
        runner.upgrade_examples()
        log.info("event=migrated examples=true")
    return 0


def _grant(args: argparse.Namespace) -> int:
    import psycopg

    from outbox.errors import ConfigurationError
    from outbox.migrations import grants
    from outbox.settings import get_settings

    settings = get_settings()
    try:
        statements = grants.grant_emit_statements(args.role, args.service, settings.outbox_schema)
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    if args.print:
        with psycopg.connect(settings.libpq_url(), connect_timeout=10) as conn:
            print(grants.render(statements, conn), end="")
        return 0
    from outbox.cli import eventloop
    from outbox.cli.audit import command_audit

    async def granted() -> None:
        # psycopg runs the grant; the audit row follows on its own connection, opened first so
        # that an unreachable audit log refuses the grant.
        async with command_audit(settings) as audit:
            grants.grant_emit(settings.libpq_url(), args.role, args.service, settings.outbox_schema)
            await audit.record(
                "grant",
                target=args.role,
                counts={"services": len(set(args.service))},
                details={"services": sorted(set(args.service))},
            )

    eventloop.run(granted())
    logging.getLogger("outbox.cli").info(
        "event=granted role=%s services=%s schema=%s",
        args.role,
        ",".join(args.service),
        settings.outbox_schema,
    )
    return 0


#: The extra that brings what each command needs (pyproject.toml, optional-dependencies).
_EXTRAS = {
    "migrate": "migrate",
    "grant": "migrate",
    "audit": "relay",
    "check": "relay",
    "relay": "relay",
    "prune": "relay",
    "forget-marks": "relay",
    "partitions": "relay",
    "demo": "relay",
    "project": "projections",
    "projections": "projections",
    "dlq": "projections",
    "keys": "relay,encryption",
    "tenants": "relay",
    "monitor": "monitor",
    "maintain": "client",
    "smoke": "client",
}
#: Modules of the extras, as opposed to the base install or a bug of ours.
_OPTIONAL_MODULES = frozenset(
    {
        "alembic",
        "asyncpg",
        "cryptography",
        "fastapi",
        "hiredis",
        "prometheus_client",
        "psycopg",
        "redis",
        "sqlalchemy",
        "starlette",
        "uvicorn",
        "uvloop",
    }
)


def _read_settings() -> Settings:
    """A command reads the environment and ``.env`` of its working directory (a library never
    reads ``.env``), and what it emits (``outbox demo``) and migrates uses the same schema."""
    from outbox.keyring import keys_from
    from outbox.settings import configure, get_settings, use_env_file

    use_env_file(".env")
    settings = get_settings()
    configure(
        schema=settings.outbox_schema,
        max_payload_bytes=settings.max_payload_bytes,
        stream_prefix=settings.stream_prefix,
    )
    keys_from(settings)  # encryption keys from the same place (.env too)
    return settings


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
        description="Apply the outbox migrations to the tables in OUTBOX_SCHEMA (default public), "
        "recorded in their own version table, outbox_alembic_version, beside any alembic history "
        "of your service. Safe to run concurrently and repeatedly.",
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
    migrate.add_argument(
        "--examples",
        action="store_true",
        help="also create the example projections' read models (the demo's; never needed in a "
        "service)",
    )
    migrate.add_argument(
        "--stamp",
        metavar="REVISION",
        help="record REVISION as applied without running anything (to take over tables another "
        "alembic history created)",
    )
    migrate.set_defaults(handler=_migrate)

    grant = sub.add_parser(
        "grant",
        help="let a service's database role emit its events, and nothing more",
        description="Grant ROLE what emit() needs on OUTBOX_SCHEMA.outbox_events (USAGE, INSERT, "
        "SELECT) and turn on row-level security so that it sees and writes only the rows of "
        "its own services. Idempotent. Run as the outbox's owner (docs/adopting.md).",
    )
    grant.add_argument("role", help="the service's PostgreSQL role")
    grant.add_argument(
        "--service",
        action="append",
        required=True,
        help="a service the role emits for (repeat for several)",
    )
    grant.add_argument("--print", action="store_true", help="print the SQL instead of running it")
    grant.set_defaults(handler=_grant)

    # Each area registers its own subcommands (handlers import their package lazily).
    from outbox.cli import audit as audit_commands
    from outbox.cli import check as check_commands
    from outbox.cli import demo as demo_commands
    from outbox.cli import keys as keys_commands
    from outbox.cli import monitor as monitor_commands
    from outbox.cli import projections as projections_commands
    from outbox.cli import relay as relay_commands
    from outbox.cli import smoke as smoke_commands
    from outbox.cli import tenants as tenants_commands

    check_commands.register(sub)
    relay_commands.register(sub)
    projections_commands.register(sub)
    monitor_commands.register(sub)
    demo_commands.register(sub)
    smoke_commands.register(sub)
    audit_commands.register(sub)
    keys_commands.register(sub)
    tenants_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from outbox.cli.errors import report_failure
    from outbox.cli.logs import configure_logging

    handler: Handler = args.handler
    try:
        # LOG_FORMAT is a setting, so logging is configured once the settings are read;
        # report_failure prints a bad setting without needing logging.
        settings = _read_settings()
        configure_logging(settings.log_format, verbose=args.verbose)
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as error:
        extra = _EXTRAS.get(args.command)
        if extra is None or (error.name or "").split(".")[0] not in _OPTIONAL_MODULES:
            raise
        print(
            f"outbox: `outbox {args.command}` needs {error.name}, which is not installed: "
            f"pip install 'opsconductor-outbox[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except Exception as error:
        code = report_failure(error)
        if code is None:
            raise
        return code


if __name__ == "__main__":
    sys.exit(main())
