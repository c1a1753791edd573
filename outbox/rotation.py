"""``outbox keys rotate``: re-wrap the data keys of the outbox log's encrypted values under the
active master key, and ``outbox keys status``: which keys the log's values need.

Only the wrapped data key (``kid``, ``wk``) of each value changes; its ciphertext, and so its
plaintext, stays the same. That is the one change ever made to a stored ``outbox_events`` row:
the rest of the log stays append-only, and a reader holding the old key or the new one reads the
same event.

Safe beside a running relay and emitters: rows are read in position order outside any
transaction, re-wrapped in Python, and written back per batch in one autocommit ``UPDATE`` that
changes a row only if its payload is still the one read (a compare-and-set), so no transaction
of the rotation is open while it computes. The relay reads either version of a row (MVCC), both
readable; it is held back, like by any write transaction, for the few milliseconds of each
``UPDATE`` only (DESIGN.md invariant 2). ``txid`` and ``position`` are not changed, so cursors
are not affected. Rows already under the active key are skipped, so a rotation that stopped is
resumed by running it again (or from ``--after`` the position it printed).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from outbox.encryption import key_ids_of, paths_of, rewrap_payload
from outbox.errors import DecryptError
from outbox.keyring import KeyProvider
from outbox.naming import DEFAULT_SCHEMA
from outbox.queries import Query

log = logging.getLogger("outbox.rotation")

# The encrypted rows after a position, in position order (the primary key's order).
ENCRYPTED_ROWS = Query(
    "keys_encrypted_rows",
    """
    SELECT position, event_id::text AS event_id, stream, event_type, payload::text AS payload,
           headers->>'encrypted' AS paths
      FROM outbox_events
     WHERE position > :after AND headers ? 'encrypted'
     ORDER BY position
     LIMIT :limit
    """,
)

# Compare-and-set: a row is written only if its payload is still what was read.
REWRAP = Query(
    "keys_rewrap",
    """
    UPDATE outbox_events o
       SET payload = CAST(u.new_payload AS jsonb)
      FROM unnest(CAST(:positions AS bigint[]), CAST(:old_payloads AS text[]),
                  CAST(:new_payloads AS text[])) AS u(position, old_payload, new_payload)
     WHERE o.position = u.position AND o.payload = CAST(u.old_payload AS jsonb)
    RETURNING o.position
    """,
)

# How many encrypted values of the log each key id wraps.
VALUES_BY_KEY = Query(
    "keys_values_by_key",
    """
    SELECT kid #>> '{}' AS kid, count(*) AS n_values, count(DISTINCT position) AS n_events
      FROM outbox_events,
           jsonb_path_query(payload, 'strict $.** ? (exists(@."$enc")).kid') AS kid
     WHERE headers ? 'encrypted'
     GROUP BY 1
     ORDER BY 1
    """,
)

Progress = Callable[["RotationCounts"], None]


@dataclass
class RotationCounts:
    """What a rotation did (recorded in the audit log)."""

    rows_scanned: int = 0
    rows_rewrapped: int = 0
    values_rewrapped: int = 0
    rows_unreadable: int = 0
    rows_changed_meanwhile: int = 0
    last_position: int = 0

    def as_counts(self) -> dict[str, int]:
        return asdict(self)


async def rotate(
    conn: Any,
    provider: KeyProvider,
    *,
    schema: str = DEFAULT_SCHEMA,
    batch_size: int = 500,
    after: int = 0,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> RotationCounts:
    """Re-wrap every encrypted value of the log after position ``after`` under the active key
    of ``provider`` (which must also hold the old keys), on ``conn`` (asyncpg, not in a
    transaction). A row whose old key is missing is counted as unreadable and left as it is."""
    key_id = provider.active_key_id()
    provider.key(key_id)  # KeyError before anything is read: the active key must be there
    select, update = ENCRYPTED_ROWS.in_schema(schema), REWRAP.in_schema(schema)
    counts = RotationCounts(last_position=after)
    while True:
        rows = await conn.fetch(
            select.asyncpg_sql, *select.asyncpg_args({"after": after, "limit": batch_size})
        )
        if not rows:
            break
        positions: list[int] = []
        old: list[str] = []
        new: list[str] = []
        for row in rows:
            counts.rows_scanned += 1
            paths = paths_of({"encrypted": row["paths"]}) or []
            try:
                result = rewrap_payload(
                    row["stream"],
                    row["event_type"],
                    row["event_id"],
                    json.loads(row["payload"]),
                    paths,
                    provider,
                    key_id,
                )
            except DecryptError as error:
                counts.rows_unreadable += 1
                log.warning("event=rotate_unreadable position=%d error=%s", row["position"], error)
                continue
            if result is None:
                continue
            data, values = result
            positions.append(row["position"])
            old.append(row["payload"])
            new.append(json.dumps(data, ensure_ascii=False, separators=(",", ":")))
            counts.values_rewrapped += values
        if positions and not dry_run:
            written = await conn.fetch(
                update.asyncpg_sql,
                *update.asyncpg_args(
                    {"positions": positions, "old_payloads": old, "new_payloads": new}
                ),
            )
            counts.rows_rewrapped += len(written)
            counts.rows_changed_meanwhile += len(positions) - len(written)
        elif dry_run:
            counts.rows_rewrapped += len(positions)
        after = counts.last_position = int(rows[-1]["position"])
        if progress is not None:
            progress(counts)
    return counts


@dataclass(frozen=True)
class KeyUse:
    key_id: str
    values: int
    events: int


async def key_use(conn: Any, *, schema: str = DEFAULT_SCHEMA) -> list[KeyUse]:
    """How many encrypted values (and events) of the outbox log each key id wraps."""
    query = VALUES_BY_KEY.in_schema(schema)
    rows = await conn.fetch(query.asyncpg_sql)
    return [KeyUse(row["kid"], int(row["n_values"]), int(row["n_events"])) for row in rows]


def key_ids_of_row(payload: str, paths_text: str | None) -> Counter[str]:
    """The key ids of one stored row's values (tests, diagnostics)."""
    paths = paths_of({"encrypted": paths_text or ""}) or []
    return Counter(key_ids_of(json.loads(payload), paths))
