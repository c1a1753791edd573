"""What does the outbox row itself cost PostgreSQL, whatever the client does?

bench/emit.py measures emit() from Python. This benchmark takes the client out: ``pgbench`` (C,
a few µs per statement) runs the business transaction of bench/emit.py at 16 connections in
seven variants and reports each one's rate, its cost beside its baseline, and WAL bytes per
transaction. With the prepared protocol (what asyncpg does), against ``business``:

- ``business``: BEGIN; INSERT one business row; COMMIT.
- ``second_insert``: plus a second business INSERT: what any extra statement costs.
- ``outbox_statement``: plus emit()'s INSERT (``outbox.queries.INSERT_EVENT`` with the values
  bench/emit.py emits) as its own statement: what emit() asks of PostgreSQL.
- ``row_without_indexes``: the same row into a copy of ``outbox_events`` without any index:
  what the indexes cost.
- ``one_statement``: the business INSERT and emit()'s INSERT as one statement
  (``WITH business AS (INSERT …) INSERT INTO outbox_events …``): no extra round trip, still
  prepared.

With the simple protocol, against ``business_simple`` (the same transaction as ``business``):

- ``outbox_with_commit``: emit()'s INSERT sent in one message with the COMMIT, adding no round
  trip: the floor of an emit() that defers its INSERT to the COMMIT. A message holding two
  statements needs the simple protocol, so the INSERT is parsed and planned every time.

The variants run interleaved, ``--repeats`` times each, and the median is kept. WAL bytes come
from ``pg_current_wal_lsn()`` around each run.

    python -m bench.emit_floor [--seconds 8] [--connections 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import re
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import check, scratch_database, write_result
from bench.emit import BUSINESS_DDL
from outbox import queries

BUSINESS = (
    "INSERT INTO bench_users (name, email) "
    "VALUES ('user-' || :client_id, 'user-' || :client_id || '@example.com')"
)
# The payload bench/emit.py emits, as emit() serialises it.
PAYLOAD = json.dumps(
    {"user_id": 12345, "name": "user-12345", "email": "user-12345@example.com", "roles": ["ops"]},
    ensure_ascii=False,
    separators=(",", ":"),
)
# emit()'s statement with literals in place of its parameters (pgbench has no uuid generator:
# the server draws the ids).
VALUES = {
    "event_id": "gen_random_uuid()",
    "stream": "'identity'",
    "event_type": "'user_created'",
    "source": "'identity'",
    "aggregate_id": ":client_id::text",
    "priority": "1",
    "payload": f"'{PAYLOAD}'",
    "headers": "NULL",
    "correlation_id": "md5(random()::text)",
    "causation_id": "NULL",
    "user_id": "NULL",
    "traceparent": "NULL",
    "dedup_key": "NULL",
}
FLOOR_TABLE = "outbox_events_floor"


def _outbox_insert(table: str = "outbox_events") -> str:
    sql = re.sub(r"(?<![:\w]):(\w+)", lambda m: VALUES[m.group(1)], queries.INSERT_EVENT.sql)
    if table != "outbox_events":
        # No index, so no arbiter for ON CONFLICT: a plain INSERT of the same row.
        sql = sql.replace("INSERT INTO outbox_events", f"INSERT INTO {table}")
        sql = re.sub(r"ON CONFLICT .* DO NOTHING", "", sql)
    return " ".join(sql.split())


@dataclass(frozen=True)
class Variant:
    protocol: str  # pgbench --protocol
    lines: list[str]
    baseline: str  # the variant its cost is measured against (same protocol)


def _transaction(*statements: str) -> list[str]:
    return ["BEGIN;", *statements, "COMMIT;"]


# "\;" ends a statement without ending the message: pgbench sends it and the next statement
# (here COMMIT) as one simple-protocol message.
VARIANTS = {
    "business": Variant("prepared", _transaction(f"{BUSINESS};"), "business"),
    "second_insert": Variant("prepared", _transaction(f"{BUSINESS};", f"{BUSINESS};"), "business"),
    "outbox_statement": Variant(
        "prepared", _transaction(f"{BUSINESS};", f"{_outbox_insert()};"), "business"
    ),
    "row_without_indexes": Variant(
        "prepared", _transaction(f"{BUSINESS};", f"{_outbox_insert(FLOOR_TABLE)};"), "business"
    ),
    # Design 2 of decision 0008: the business row and its event in one statement.
    "one_statement": Variant(
        "prepared", _transaction(f"WITH business AS ({BUSINESS}) {_outbox_insert()};"), "business"
    ),
    "business_simple": Variant("simple", _transaction(f"{BUSINESS};"), "business_simple"),
    "outbox_with_commit": Variant(
        "simple",
        ["BEGIN;", f"{BUSINESS};", f"{_outbox_insert()} \\;", "COMMIT;"],
        "business_simple",
    ),
}


def find_pgbench() -> str | None:
    """pgbench from PATH, else from the PostgreSQL server packages (Debian keeps it off PATH)."""
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))
    return candidates[-1] if candidates else None


async def _prepare(conn: asyncpg.Connection) -> None:
    await conn.execute(BUSINESS_DDL)
    await conn.execute(
        f"CREATE TABLE {FLOOR_TABLE} (LIKE outbox_events INCLUDING DEFAULTS INCLUDING IDENTITY)"
    )


async def _reset(conn: asyncpg.Connection) -> int:
    """Empty the tables and checkpoint, so each run starts alike; return the WAL position."""
    await conn.execute(f"TRUNCATE bench_users, outbox_events, {FLOOR_TABLE}")
    await conn.execute("CHECKPOINT")
    return await _wal_position(conn)


async def _wal_position(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT pg_current_wal_lsn()"))  # asyncpg: pg_lsn -> int


def _pgbench(
    pgbench: str, url: str, script: Path, protocol: str, connections: int, seconds: float
) -> tuple[float, int]:
    """One pgbench run: (transactions/s, transactions processed)."""
    out = subprocess.run(
        [
            pgbench,
            "--no-vacuum",
            f"--protocol={protocol}",
            f"--client={connections}",
            f"--jobs={min(connections, 2)}",
            f"--time={max(1, round(seconds))}",
            f"--file={script}",
            url,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed ({out.returncode}): {out.stderr.strip()}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
    done = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    if tps is None or done is None:
        raise RuntimeError(f"unexpected pgbench output:\n{out.stdout}")
    return float(tps.group(1)), int(done.group(1))


async def main(seconds: float, connections: int, repeats: int) -> int:
    pgbench = find_pgbench()
    if pgbench is None:
        print("pgbench not found (it ships with the PostgreSQL server packages); skipped")
        return 1
    runs: dict[str, list[float]] = {name: [] for name in VARIANTS}
    wal: dict[str, list[float]] = {name: [] for name in VARIANTS}
    async with scratch_database("emit_floor") as url:
        # One connection for set-up, resets and WAL positions, idle while pgbench runs.
        admin = await asyncpg.connect(url)
        await _prepare(admin)
        with tempfile.TemporaryDirectory() as tmp:
            paths = {}
            for name, variant in VARIANTS.items():
                paths[name] = Path(tmp) / f"{name}.sql"
                paths[name].write_text("\n".join(variant.lines) + "\n")
            # Interleaved, so drift (autovacuum, a neighbour on the host) hits all alike.
            for repeat in range(repeats):
                for name in VARIANTS:
                    lsn = await _reset(admin)
                    tps, done = await asyncio.to_thread(
                        _pgbench,
                        pgbench,
                        url,
                        paths[name],
                        VARIANTS[name].protocol,
                        connections,
                        seconds,
                    )
                    runs[name].append(tps)
                    wal[name].append((await _wal_position(admin) - lsn) / max(1, done))
                    print(f"run {repeat + 1}/{repeats} {name}: {tps:.0f} tx/s", flush=True)
        await admin.close()
    rate = {name: statistics.median(values) for name, values in runs.items()}

    def cost(name: str) -> float:
        return round(100 * (1 - rate[name] / rate[VARIANTS[name].baseline]), 1)

    variants: dict[str, Any] = {
        name: {
            "protocol": variant.protocol,
            "tx_per_s": round(rate[name]),
            "cost_pct": cost(name),
            "cost_against": variant.baseline,
            "wal_bytes_per_tx": round(statistics.median(wal[name])),
            "runs": [round(x) for x in runs[name]],
            "script": variant.lines,
        }
        for name, variant in VARIANTS.items()
    }
    write_result(
        "emit_floor",
        {
            "client": "pgbench",
            "connections": connections,
            "seconds_per_run": seconds,
            "repeats": repeats,
            "variants": variants,
        },
        [
            check(
                f"outbox row riding on the COMMIT (no extra round trip), {connections} "
                f"connections, pgbench, simple protocol "
                f"({round(rate['business_simple'])} → {round(rate['outbox_with_commit'])} tx/s); "
                f"prepared: as its own statement {cost('outbox_statement')}%, in one statement "
                f"with the business INSERT {cost('one_statement')}%, the row with no index "
                f"{cost('row_without_indexes')}%, a second business INSERT "
                f"{cost('second_insert')}%",
                cost("outbox_with_commit"),
                "<=",
                15,
                "%",
            )
        ],
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (median kept)")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.seconds, args.connections, args.repeats)))
