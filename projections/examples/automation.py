"""``automation_stats``: per job, how many runs started, completed and failed, and their time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from outbox.projections.examples import queries
from outbox.projections.examples.common import occurred_at
from outbox.projections.projection import Connection, Projection
from outbox.streams.codec import StreamMessage

automation_stats = Projection(
    "automation_stats",
    streams=["automation"],
    tables=["automation_job_stats"],
    doc="Counts and total duration per automation job, from automation events.",
)

_COLUMN = {"automation_started": 0, "automation_completed": 1, "automation_failed": 2}


@automation_stats.on_batch("automation_started")
@automation_stats.on_batch("automation_completed")
@automation_stats.on_batch("automation_failed")
async def add_job_stats(events: Sequence[StreamMessage], db: Connection) -> None:
    # Sums commute, so one statement adds the whole run whatever its order.
    totals: dict[str, list[int]] = {}
    last: dict[str, datetime] = {}
    for message in events:
        job = str(message.data.get("job_name") or message.aggregate_id or "unknown")
        row = totals.setdefault(job, [0, 0, 0, 0])
        row[_COLUMN[message.event_type]] += 1
        if message.event_type != "automation_started":
            row[3] += int(message.data.get("duration_ms") or 0)
        at = occurred_at(message)
        last[job] = max(last.get(job, at), at)
    jobs = list(totals)
    await db.execute(
        queries.ADD_JOB_STATS,
        jobs,
        [totals[j][0] for j in jobs],
        [totals[j][1] for j in jobs],
        [totals[j][2] for j in jobs],
        [totals[j][3] for j in jobs],
        [last[j] for j in jobs],
    )
