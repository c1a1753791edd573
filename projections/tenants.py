"""Which of the outbox's rows a projection process's streams carry, by tenant (docs/tenancy.md).

A projection reads the outbox log back where its streams cannot serve it (a rebuild, entries
trimmed before they were read): it must read exactly the rows its streams carry, or a rebuild
would apply events live consumption never sees. With TENANT_STREAMS, a service's events of a
tenant go to the tenant's streams, so:

- the deployment's process (no TENANT_ID) carries a service's events without a tenant, and
  every event of a service that has no tenant streams;
- tenant ``T``'s process (TENANT_ID=T) carries ``T``'s events of the services that have tenant
  streams, and nothing else (of other services, ``T``'s events are on the deployment's streams).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


def _never(service: str) -> bool:
    return False


@dataclass(frozen=True)
class TenantView:
    """The tenant of a projection process and which services have tenant streams."""

    tenant: str | None = None
    streamed: Callable[[str], bool] = _never

    @classmethod
    def for_settings(cls, settings: Any) -> TenantView:
        return cls(settings.tenant_id, settings.tenant_streamed())

    def params(self, services: Sequence[str]) -> dict[str, Any]:
        """The parameters of :data:`projections.queries.TENANT_CONDITION` for ``services``."""
        return {
            "tenant": self.tenant,
            "tenant_streamed": [s for s in services if self.streamed(s)],
        }


#: The view of a deployment without TENANT_STREAMS (every row, as before tenants).
NO_TENANTS = TenantView()
