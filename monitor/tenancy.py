"""Who sees what in the monitor when tenants have their own streams (docs/monitor.md#tenants).

Without ``MONITOR_TENANT_TOKENS`` reads are open, as they always were, and ``?tenant=`` is only
a filter. With it, every ``/api/*`` request and ``/ws`` carries a bearer token: the admin's
(``MONITOR_ADMIN_TOKEN``) sees everything, a tenant's sees its own tenant only, as if
``?tenant=<its tenant>`` were forced, and never acts. What a tenant cannot see answers 403
(another tenant, a deployment-wide endpoint) or 404 (a stream that is not its own, whether or
not it exists), so a token never learns what exists outside its tenant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from outbox.monitor.collector import client_component
from outbox.monitor.security import token_matches
from outbox.monitor.status import Status, worst
from outbox.settings import Settings
from outbox.validation import check_tenant_id

#: The reads a tenant's token may make: its streams, groups, pending entries, consumers, dead
#: letters, correlation traces and the snapshot of them. Everything else under /api (the
#: outbox's totals, relays, projections, the Redis server, the audit log) is the deployment's.
TENANT_READS = re.compile(
    r"^/api/(snapshot|status|streams|consumers|events|dead-letters(/\d{1,20}-\d{1,20})?"
    r"|stream/[^/]+|pending/[^/]+/[^/]+)$"
)


class TenantRefused(Exception):
    """A tenant's token asked for something outside its tenant."""


class BadTenant(ValueError):
    """``?tenant=`` is not a tenant id."""


@dataclass(frozen=True)
class Viewer:
    """Who asks: everything (``tenant`` None: the admin, or anyone without tenant tokens), or
    one tenant."""

    tenant: str | None = None


EVERYONE = Viewer()


class Access:
    """The tokens of MONITOR_ADMIN_TOKEN and MONITOR_TENANT_TOKENS, and who a header is."""

    def __init__(self, settings: Settings) -> None:
        admin = settings.monitor_admin_token
        self.admin_token = admin.get_secret_value() if admin else ""
        self.tenant_tokens = settings.tenant_tokens()

    @property
    def required(self) -> bool:
        """Reads need a token: MONITOR_TENANT_TOKENS is set."""
        return bool(self.tenant_tokens)

    def identify(self, header: str | None) -> Viewer | None:
        """The viewer of an ``Authorization`` header; None when a token is required and this
        one is none of them. Every token is compared (in constant time), whichever matches."""
        if not self.required:
            return EVERYONE
        found: Viewer | None = EVERYONE if token_matches(header, self.admin_token) else None
        for tenant, token in self.tenant_tokens:
            if token_matches(header, token) and found is None:
                found = Viewer(tenant)
        return found


def asked_tenant(text: str | None) -> str | None:
    """The ``?tenant=`` of a request, checked (:class:`BadTenant` for anything else)."""
    if text is None:
        return None
    try:
        return check_tenant_id(text)
    except ValueError as error:
        raise BadTenant(str(error)) from None


def tenant_in_scope(viewer: Viewer, asked: str | None) -> str | None:
    """The tenant a request is restricted to: the one asked for, or the viewer's own (asking a
    tenant's token for another tenant is :class:`TenantRefused`); None: everything."""
    if viewer.tenant is None:
        return asked
    if asked is not None and asked != viewer.tenant:
        raise TenantRefused
    return viewer.tenant


def scope_snapshot(snapshot: dict[str, Any], tenant: str | None) -> dict[str, Any]:
    """The snapshot as ``tenant`` may see it: its streams, consumers, dead letters, backlog and
    their statuses, and nothing of the deployment or of other tenants (the outbox's totals,
    relays, projections, partitions and the Redis server are left empty). None: all of it."""
    if tenant is None:
        return snapshot
    streams = [s for s in snapshot["streams"] if s.get("tenant") == tenant]
    consumers = [c for c in snapshot["consumers"] if c.get("tenant") == tenant]
    summaries = [t for t in snapshot.get("tenants", []) if t["tenant"] == tenant]
    own = {f"stream:{s['key']}" for s in streams} | {client_component(c) for c in consumers}
    groups = tuple(f"group:{s['key']}/" for s in streams)
    components = [
        c
        for c in snapshot["status"]["components"]
        if c["component"] in own or c["component"].startswith(groups)
    ]
    overall = worst([Status(c["level"], c["reason"]) for c in components])
    return {
        **snapshot,
        "outbox": {
            "db_now": snapshot["outbox"]["db_now"],
            "streams": [],
            "oldest_write_transaction": None,
            "deferred_transactions": 0,
        },
        "relays": [],
        "streams": streams,
        "projections": [],
        "consumers": consumers,
        "dead_letters": (summaries[0]["dead_letters"] if summaries else {"count": 0, "added": 0}),
        "partitions": [],
        "tenants": summaries,
        "redis": None,
        "status": {"overall": overall.as_dict(), "components": components},
    }


class TokenGate:
    """ASGI middleware: with MONITOR_TENANT_TOKENS, every /api/* request and /metrics need a
    token (401); a tenant's token reads only the routes of :data:`TENANT_READS` (403 for the
    rest, writes included, and /metrics: the deployment's, for Prometheus). Who asks is left in
    the request's state (``request.state.viewer``) for the routes' tenant scope. Without tenant
    tokens it passes every request through untouched. /ws checks its token itself."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or not self.access.required
            or not (path.startswith("/api/") or path == "/metrics")
        ):
            await self.app(scope, receive, send)
            return
        viewer = self.access.identify(Headers(scope=scope).get("authorization"))
        if viewer is None:
            refused = JSONResponse(
                {"detail": "a valid token is required (MONITOR_TENANT_TOKENS is set)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await refused(scope, receive, send)
            return
        if viewer.tenant is not None and (
            scope["method"] not in ("GET", "HEAD") or not TENANT_READS.match(path)
        ):
            refused = JSONResponse(
                {"detail": "a tenant's token reads its own tenant only"}, status_code=403
            )
            await refused(scope, receive, send)
            return
        scope.setdefault("state", {})["viewer"] = viewer
        await self.app(scope, receive, send)
