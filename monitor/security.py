"""What the monitor never shows and who may change anything.

- Payload fields named in ``MONITOR_MASK_FIELDS`` are masked in every event payload the
  monitor shows (the correlation trace, dead letters), at any depth.
- Encrypted event fields (docs/encryption.md) are shown as ``[encrypted]``: the monitor holds
  no key and never opens them.
- Connection URLs and passwords never leave the process (``outbox.settings.redact_url``).
- Write actions need ``Authorization: Bearer <MONITOR_ADMIN_TOKEN>``; with no token configured
  they are refused.
- With ``MONITOR_TENANT_TOKENS`` every read needs a token too, and a tenant's token sees its
  own tenant only (``monitor/tenancy.py``).
- ``/ws`` accepts only the page's own Origin (plus ``MONITOR_ALLOWED_ORIGINS``).
- Stream and group names in paths must match a strict pattern (else 404/422, never a 500).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from typing import Any

from outbox.encryption import MARKER as ENCRYPTED_MARKER

MASK = "***"
#: What the monitor shows for an encrypted value: it holds no key, and a ciphertext blob says
#: nothing to a person.
ENCRYPTED = "[encrypted]"
#: Stream keys and group names the API accepts in a path (Redis keys of this project).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.:{}-]{1,200}$")


def mask_fields(value: Any, names: frozenset[str]) -> Any:
    """A copy of ``value`` with the values of keys named in ``names`` (case-insensitive) masked,
    and every encrypted value (``{"$enc": …}``) shown as ``[encrypted]``, not as its blob."""
    if isinstance(value, dict):
        if ENCRYPTED_MARKER in value:
            return ENCRYPTED
        return {
            k: (MASK if isinstance(k, str) and k.lower() in names else mask_fields(v, names))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_fields(item, names) for item in value]
    return value


def parse_names(text: str) -> frozenset[str]:
    return frozenset(part.strip().lower() for part in text.split(",") if part.strip())


def token_matches(header: str | None, token: str | None) -> bool:
    """True when ``header`` is ``Bearer <token>``; always False when no token is configured."""
    if not token or not header:
        return False
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def origin_allowed(origin: str | None, host: str | None, extra: Iterable[str]) -> bool:
    """Same-origin (the Host the page was served from) or an explicitly allowed Origin."""
    if origin is None:
        return True  # not a browser: non-browser clients send no Origin
    allowed = {o.strip().rstrip("/") for o in extra if o.strip()}
    if origin.rstrip("/") in allowed:
        return True
    if host is None:
        return False
    return origin.rstrip("/") in (f"http://{host}", f"https://{host}")
