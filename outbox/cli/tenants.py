"""Subcommand ``outbox tenants acl``: the Redis ACL user of a tenant (docs/tenant-acl.md).

Without ``--apply`` it prints the ``ACL SETUSER`` command (the password as its SHA-256 hash,
never in clear); with ``--apply`` it runs it on Redis, on every node of a Redis Cluster, and
records ``tenants.acl`` in the audit log (connected first: when PostgreSQL cannot be reached
nothing is changed, as for the other audited commands).

The password comes from a file (``--password-file``), never from the command line, where
``ps`` and the shell history would show it. ``--generate-password`` makes a new one and writes
it to that file, created with mode 0600 and never overwritten; it is not printed, so it cannot
end up in a terminal's scrollback or a CI log.
"""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path
from typing import Any

#: Bytes of randomness in a generated password (URL-safe base64: 43 characters).
GENERATED_PASSWORD_BYTES = 32


def _password(args: argparse.Namespace) -> str:
    from outbox.errors import ConfigurationError

    if args.password_file is None:
        raise ConfigurationError(
            "give the tenant's password in --password-file PATH, or --generate-password "
            "--password-file PATH to make one"
        )
    path = Path(args.password_file)
    if args.generate_password:
        password = secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
        try:
            # O_EXCL: an existing file (another tenant's password?) is never overwritten.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigurationError(
                f"{path} exists: --generate-password writes a new file, it never overwrites one"
            ) from None
        except OSError as error:
            raise ConfigurationError(f"cannot create {path}: {error.strerror}") from None
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")
        return password
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigurationError(f"cannot read {path}: {error.strerror}") from None
    password = text.rstrip("\r\n")
    if not password or "\n" in password:
        raise ConfigurationError(f"{path} must hold the password, on one line")
    return password


def _acl(args: argparse.Namespace) -> int:
    from outbox.settings import get_settings
    from outbox.streams.acl import tenant_acl
    from outbox.streams.keys import Keys
    from outbox.validation import check_tenant_id

    settings = get_settings()
    tenant = check_tenant_id(args.tenant)
    acl = tenant_acl(
        Keys.for_settings(settings),
        tenant,
        _password(args),
        user=args.user,
        cluster=settings.cluster,
    )
    if not args.apply:
        print(acl.render())
        return 0

    async def main() -> int:
        from outbox.cli.audit import command_audit
        from outbox.streams.acl import apply
        from outbox.streams.connection import connect

        details: dict[str, Any] = {"user": acl.user, "cluster": settings.cluster}
        async with command_audit(settings) as audit:
            redis = await connect(
                settings.redis_url(), settings.redis_password_text(), cluster=settings.cluster
            )
            applied: list[str] = []
            try:
                await apply(redis, acl, applied)
            except Exception as error:
                await audit.record_failure(
                    "tenants.acl",
                    error,
                    target=tenant,
                    counts={"nodes": len(applied)},
                    details={**details, "nodes_applied": applied},
                )
                raise
            finally:
                await redis.aclose()
            await audit.record(
                "tenants.acl",
                target=tenant,
                counts={"nodes": len(applied)},
                details={**details, "nodes_applied": applied},
            )
        print(acl.render())
        print(f"set ACL user {acl.user} on {len(applied)} node(s): {', '.join(applied)}")
        return 0

    from outbox.cli import eventloop

    return eventloop.run(main())


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this area's subcommands to the ``outbox`` parser."""
    tenants = sub.add_parser(
        "tenants",
        help="tenants: the Redis ACL user that confines a tenant to its own keys",
        description="Tenants' Redis access (docs/tenant-acl.md).",
    )
    actions = tenants.add_subparsers(dest="tenants_command", metavar="ACTION", required=True)
    acl = actions.add_parser(
        "acl",
        help="print (or --apply) the ACL SETUSER of a tenant's Redis user",
        description="The ACL user of TENANT may read its keys (<prefix>:tenant:<TENANT>:*), "
        "write only its streams and consumers hash, and run only what RedisStreamsClient("
        "tenant=TENANT) sends. Printed with the password's SHA-256, never the password. "
        "--apply runs it (on every node of a cluster) and records tenants.acl in the audit "
        "log (needs DATABASE_URL).",
    )
    acl.add_argument("tenant", help="the tenant id")
    acl.add_argument("--user", help="the ACL user name (default <prefix>-tenant-<tenant>)")
    acl.add_argument(
        "--password-file",
        metavar="PATH",
        help="a file holding the user's password on one line",
    )
    acl.add_argument(
        "--generate-password",
        action="store_true",
        help="make a new random password and write it to --password-file PATH (created with "
        "mode 0600, never overwritten, never printed)",
    )
    acl.add_argument(
        "--apply",
        action="store_true",
        help="run it on Redis (every node of a cluster) instead of printing it; audited",
    )
    acl.set_defaults(handler=_acl)
