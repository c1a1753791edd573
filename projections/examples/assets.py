"""``asset_inventory``: known assets and how often they were scanned, from asset events."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from outbox.projections.examples import queries
from outbox.projections.examples.common import latest, occurred_at, upsert_rows, version
from outbox.projections.projection import Connection, Projection
from outbox.streams.codec import StreamMessage

asset_inventory = Projection(
    "asset_inventory",
    streams=["assets"],
    tables=["inventory_assets"],
    doc="One row per asset (tombstoned on delete) with its scan count, from asset events.",
)


def _asset_id(message: StreamMessage) -> str:
    return str(message.data.get("asset_id") or message.aggregate_id)


@asset_inventory.on_batch("asset_created")
@asset_inventory.on_batch("asset_updated")
async def upsert_assets(events: Sequence[StreamMessage], db: Connection) -> None:
    await db.execute(
        queries.UPSERT_ASSETS,
        upsert_rows(events, _asset_id, ("hostname", "ip_address", "asset_type")),
    )


@asset_inventory.on_batch("asset_deleted")
async def delete_assets(events: Sequence[StreamMessage], db: Connection) -> None:
    rows = latest(events, _asset_id)
    await db.execute(
        queries.DELETE_ASSETS, [_asset_id(m) for m in rows], [version(m) for m in rows]
    )


@asset_inventory.on_batch("asset_scanned")
async def count_scans(events: Sequence[StreamMessage], db: Connection) -> None:
    scans: Counter[str] = Counter()
    last: dict[str, datetime] = {}
    for message in events:
        asset = _asset_id(message)
        scans[asset] += 1
        at = occurred_at(message)
        last[asset] = max(last.get(asset, at), at)
    assets = list(scans)
    await db.execute(
        queries.COUNT_SCANS, assets, [scans[a] for a in assets], [last[a] for a in assets]
    )
