"""Every SQL statement of the relay, in one place (asyncpg ``$n`` placeholders).

Run only by :mod:`relay.cursor` (the work connection), :mod:`relay.leases` (the session
connection) and :mod:`relay.prune`.
"""

from __future__ import annotations

import zlib

from outbox.envelope import MessagePriority
from outbox.naming import DEFAULT_SCHEMA

# Advisory-lock namespaces (first key of the two-int4 form, which never collides with the
# one-bigint lock of the migrations): one lock per service lease, one per live relay.
LEASE_LOCK_SPACE = 0x52454C41  # "RELA"
PRESENCE_LOCK_SPACE = 0x52454C50  # "RELP"


def presence_lock_space(schema: str) -> int:
    """The presence locks of the relays of the outbox in ``schema``.

    A relay takes ``ceil(services / live relays)`` services, so it must count only the relays
    of its own outbox: relays of another schema in the same database hold other services.
    Service leases stay in one space per database, keyed by service: a stream (a service
    under one prefix) has one publisher, whichever schema it is read from.
    """
    if schema == DEFAULT_SCHEMA:
        return PRESENCE_LOCK_SPACE
    # crc32 is stable across processes and versions (hash() is not). Shifted into bits 4-27,
    # it leaves the top nibble (the space stays a positive int4) and the low nibble (0, where
    # LEASE_LOCK_SPACE's is 1) as they are.
    return PRESENCE_LOCK_SPACE ^ (zlib.crc32(schema.encode()) & 0xFF_FFFF) << 4


# --- cursor (relay/cursor.py) -------------------------------------------------------------

# The distinct services of the outbox, as a CTE ``found`` of a WITH RECURSIVE: it walks the
# (stream, txid, position) index, one probe per service instead of a scan of the outbox
# ("loose index scan", https://wiki.postgresql.org/wiki/Loose_indexscan); its last row is NULL.
_FOUND_STREAMS = """found AS (
    (SELECT stream FROM outbox_events ORDER BY stream LIMIT 1)
    UNION ALL
    SELECT (SELECT o.stream FROM outbox_events o
             WHERE o.stream > found.stream ORDER BY o.stream LIMIT 1)
      FROM found WHERE found.stream IS NOT NULL
)"""

# Register every service that has events, so it gets a cursor (0, 0) and can be leased
# (the services found by _FOUND_STREAMS). Rows are inserted only for new services,
# so the usual run writes nothing and takes no transaction id.
DISCOVER_STREAMS = f"""
WITH RECURSIVE {_FOUND_STREAMS}, added AS (
    INSERT INTO relay_cursors (stream, txid, position)
    SELECT f.stream, '0'::xid8, 0 FROM found f
     WHERE f.stream IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM relay_cursors c WHERE c.stream = f.stream)
    ON CONFLICT (stream) DO NOTHING
    RETURNING stream
)
SELECT stream FROM relay_cursors UNION SELECT stream FROM added
"""

# This outbox's source id (migration 0012), recorded beside each stream's watermark.
LOAD_SOURCE = "SELECT source_id::text FROM outbox_source"

# With the database's next transaction id, which every stored cursor must be below
# (relay.cursor refuses one that is not: the database was restored or replaced).
LOAD_CURSORS = """
SELECT stream, txid, position, marks::text, pg_snapshot_xmax(pg_current_snapshot()) AS xmax
  FROM relay_cursors WHERE stream = ANY($1::text[])
"""

# Each event's stream entry, formatted by the backend (C) rather than by the relay (Python):
# the fields ``[field, value, …]`` as one JSON array of strings, exactly what
# streams.codec.encode_flat writes (tests/integration/test_relay_store.py holds the two equal).
# The relay passes the text through and the publish script decodes it (streams.keys.PUBLISH_LUA):
# one argument per event instead of about thirty, which was most of the relay's CPU per event
# (docs/decisions/0010-entries-encoded-by-postgresql.md). An optional field is left out when
# NULL or empty: array_remove drops its name and value together. $5 is MAX_RETRIES.
# (The ELSE never happens, a CHECK constraint keeps priority in range; it keeps names and
# values paired whatever the row holds.)
_PRIORITY_LABEL = "CASE o.priority {} ELSE o.priority::text END".format(
    " ".join(f"WHEN {int(p)} THEN '{p.label}'" for p in MessagePriority)
)
_OPTIONAL_PAIRS = ",\n           ".join(
    f"CASE WHEN o.{c} <> '' THEN '{c}' END, nullif(o.{c}, '')"
    for c in ("causation_id", "user_id", "aggregate_id", "dedup_key", "traceparent", "tenant_id")
)
ENTRY_FIELDS = f"""array_to_json(array_remove(ARRAY[
           'event_id', o.event_id::text,
           'event_type', o.event_type,
           'service', o.stream,
           'source', o.source,
           'data', o.payload::text,
           'priority', {_PRIORITY_LABEL},
           'timestamp', extract(epoch FROM o.occurred_at)::text,
           'occurred_at', to_char(o.occurred_at AT TIME ZONE 'UTC',
                                  'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
           'correlation_id', o.correlation_id,
           'retry_count', '0',
           'max_retries', $5::text,
           'position', o.position::text,
           {_OPTIONAL_PAIRS},
           CASE WHEN o.headers IS NOT NULL THEN 'headers' END, o.headers::text
       ], NULL))::text"""

# The 32-bit xids (as text) of the transactions known to be of another database: the
# ``backend_xid`` of a pg_stat_activity row of that database (xid and database come from one
# backend's status entry; an xid belongs to one backend for its whole life, so even a stale row
# is right), or a prepared transaction of that database (pg_prepared_xacts). Known positively,
# never guessed (decision 0019). pg_stat_get_activity() is the function behind
# pg_stat_activity, without the view's joins to pg_database and pg_authid: 0.21 instead of
# 0.34 ms a call with 27 backends (measured). Both are readable by any role.
_FOREIGN_XIDS = """SELECT a.backend_xid::text FROM pg_stat_get_activity(NULL) a
                    WHERE a.backend_xid IS NOT NULL
                      AND a.datid <> (SELECT oid FROM pg_database
                                       WHERE datname = current_database())
                   UNION ALL
                   SELECT p.transaction::text FROM pg_prepared_xacts p
                    WHERE p.database <> current_database()"""

# A snapshot's xid8 as the 32-bit xid of the status views: its low 32 bits, unique within one
# snapshot (its xids span less than 2^31).
_XID32 = "(x::text::numeric % 4294967296)::text"

# The deferral state as a read sees it (decision 0020): ``txids``, the deferred transactions
# (passed over while still running; their rows are left out of every read until a relay has
# moved them, restamped, after they end); ``cap``, while any is deferred, the horizon no read may
# pass (the relay raises it every few milliseconds while they all still run, and the restamp
# keys their rows just below it, so they come before every transaction that was still running
# when they ended); and ``in_doubt``: a deferral has begun (relay_deferral_seq, which is not
# transactional and is read after this statement's snapshot was taken) that this snapshot does
# not show committed. Its transactions may have ended since its check, so this snapshot could
# show their rows under their first txid: a read in doubt reads nothing (its horizon is 0), and
# the next one, a few milliseconds later, sees it committed. No row here (the table emptied by
# hand) reads nothing either.
DEFERRAL_STATE = """(SELECT d.txids, d.cap,
                (SELECT CASE WHEN q.is_called THEN q.last_value ELSE 0 END
                   FROM relay_deferral_seq q) > d.generation AS in_doubt
           FROM relay_deferred d)"""


def running_floor(snapshot: str, deferred: str) -> str:
    """The oldest transaction running in ``snapshot`` that may write to this database and is
    not in ``deferred``, else the snapshot's xmax (SQL expressions, for the deferral's cap)."""
    return f"""least(pg_snapshot_xmax({snapshot}), (
            SELECT min(x) FROM pg_snapshot_xip({snapshot}) AS x
             WHERE x <> ALL({deferred}) AND {_XID32} NOT IN ({_FOREIGN_XIDS})))"""


# The relay's horizon: rows of transactions below it are all visible to this statement, and no
# row below it can appear later (DESIGN.md invariant 2), except the rows of deferred
# transactions, which every read leaves out. It is the oldest transaction that was running at
# the statement's snapshot, may write to this database and is not deferred, else the
# snapshot's xmax. Transaction ids are cluster-wide, so a snapshot lists the running
# transactions of every database of the server; one of another database can never write a row
# here, and is passed over (decision 0019); one of this database that has run a while is
# deferred by the store's tick (relay/cursor.py, decision 0020) and then passed over too.
# Anything else in the snapshot, a transaction that ended meanwhile included, holds the horizon,
# as before. Rows carry their top-level transaction's id (pg_current_xact_id()), and a
# snapshot's xip lists top-level transactions only, so subtransactions need nothing of their
# own. Reading the status views costs as much again as the batch read, so they are asked only
# about transactions that have been running a while: $7 is a snapshot xmax the relay saw at
# least FOREIGN_AFTER_S ago (relay/cursor.py, 20 ms); a transaction at or above it began since
# and holds the horizon unasked, as emitters' short transactions do. While every running
# transaction is that young the views are not read (the OR stops at its first operand). Which
# transactions are asked about changes the cost, never what is passed over.
# Two columns: the horizon, and the deferred transactions whose rows the read leaves out. While
# any is deferred the horizon is at most the deferral's cap (least() ignores a NULL cap).
HORIZON = f"""(SELECT CASE WHEN ds.in_doubt THEN '0'::xid8
                 ELSE least(pg_snapshot_xmax(snap.s), ds.cap, (
            SELECT min(x) FROM pg_snapshot_xip(snap.s) AS x
             WHERE x <> ALL(ds.txids)
               AND (x >= $7::xid8 OR {_XID32} NOT IN (
                   {_FOREIGN_XIDS})))) END,
            ds.txids
         FROM (SELECT pg_current_snapshot() AS s) snap CROSS JOIN {DEFERRAL_STATE} ds)"""

# The next batch of each service, strictly after its cursor, in cursor order. Only rows whose
# transaction is below the horizon are read: a transaction still in progress can commit later
# with a lower txid and lower positions than rows already visible, and a cursor that had moved
# past them would skip them for ever (DESIGN.md invariant 2). pg_current_snapshot() is the
# statement's own snapshot (GetActiveSnapshot), so the horizon and the rows read agree: every
# transaction below the horizon that could write here is finished, and its rows are visible to
# this very statement (https://www.postgresql.org/docs/15/functions-info.html#FUNCTIONS-PG-SNAPSHOT).
# ``partition``: the event's partition among $6, the service's partition count (1: the
# unpartitioned stream): a stable 64-bit hash of the aggregate id (the event id when there is
# none), non-negative, modulo the count (decision 0014). hashtextextended is what PostgreSQL's
# own hash partitioning uses, so it does not change between versions. ``traceparent`` and
# ``tracestate`` are each event's emit context, which the publish span links to (outbox.tracing).
FETCH_BATCH = f"""
SELECT o.stream, o.txid, o.position, o.priority, o.tenant_id, {ENTRY_FIELDS} AS fields,
       extract(epoch FROM o.occurred_at)::float8 AS occurred_s,
       o.traceparent, o.headers->>'tracestate' AS tracestate,
       CASE WHEN c.partitions > 1
            THEN ((hashtextextended(coalesce(o.aggregate_id, o.event_id::text), 0)
                   & 9223372036854775807) % c.partitions)::int
            ELSE 0 END AS partition
  FROM {HORIZON} AS h(horizon, deferred)
  CROSS JOIN unnest($1::text[], $2::xid8[], $3::bigint[], $6::int[])
       AS c(stream, txid, position, partitions)
  CROSS JOIN LATERAL (
        SELECT * FROM outbox_events e
         WHERE e.stream = c.stream
           AND (e.txid, e.position) > (c.txid, c.position)
           AND e.txid < h.horizon
           AND e.txid <> ALL(h.deferred)
         ORDER BY e.txid, e.position
         LIMIT $4) o
 -- Each service's rows in cursor order (the LATERAL yields them so, but only this promises it).
 ORDER BY o.stream, o.txid, o.position
"""

# FETCH_BATCH for a relay with routing rules (relay/routing.py, decision 0018): each row also
# carries its event type and, in ``route_data``, the values at the payload paths of $8 that the
# rules' data conditions name (a JSON array, one value per path, null where absent; NULL when
# there are no paths). Only a relay with rules runs it, so a relay without pays nothing.
FETCH_BATCH_ROUTED = FETCH_BATCH.replace(
    "o.traceparent, o.headers->>'tracestate' AS tracestate,",
    "o.traceparent, o.headers->>'tracestate' AS tracestate, o.event_type,\n"
    "       (SELECT jsonb_agg(o.payload #> string_to_array(u.path, '.') ORDER BY u.i)\n"
    "          FROM unnest($8::text[]) WITH ORDINALITY AS u(path, i))::text AS route_data,",
)
assert FETCH_BATCH_ROUTED != FETCH_BATCH

# The store's tick (relay/cursor.py), every FOREIGN_AFTER_S while the relay reads: the
# snapshot's xmax now (every transaction below it has begun; the store keeps one a while old for
# HORIZON's $7), the running transactions below $1 (a snapshot xmax seen RELAY_DEFER_AFTER_MS
# ago: they have run at least that long) that are not deferred yet, the deferred transactions
# that have ended (to restamp), and whether a deferral is in doubt (DEFERRAL_STATE). One row,
# or none when relay_deferred has lost its row.
DEFERRAL_TICK = f"""
SELECT pg_snapshot_xmax(snap.s) AS xmax,
       ARRAY(SELECT x FROM pg_snapshot_xip(snap.s) AS x
              WHERE x < $1::xid8 AND x <> ALL(ds.txids) ORDER BY x) AS old,
       ARRAY(SELECT x FROM unnest(ds.txids) AS x
              WHERE pg_visible_in_snapshot(x, snap.s) ORDER BY x) AS ended,
       cardinality(ds.txids) AS deferred, ds.in_doubt
  FROM (SELECT pg_current_snapshot() AS s) snap CROSS JOIN {DEFERRAL_STATE} ds
"""

# Which of the transactions $1 (running a while) are of this database or unknown: those a
# deferral may pass over. The rest are of another database, which the horizon passes over
# anyway (decision 0019); the store remembers them and never asks again.
OWN_TRANSACTIONS = f"""
SELECT coalesce(array_agg(x ORDER BY x), '{{}}') FROM unnest($1::xid8[]) AS x
 WHERE {_XID32} NOT IN ({_FOREIGN_XIDS})
"""

# The database's next transaction id (relay.cursor.PgOutboxStore.next_txid): a Redis watermark
# at or beyond it was not published from this database (decision 0020, "Edge cases").
SNAPSHOT_XMAX = "SELECT pg_snapshot_xmax(pg_current_snapshot())"

# --- deferral (relay/deferral.py, decision 0020), each a transaction of its own with
# synchronous_commit on. Lost in a crash after a relay acted on it, a deferral or a raise of the
# cap could leave a prepared transaction's rows behind a cursor, and a restamp would be done
# again with new positions, publishing its rows a second time.

# The one row, locked first: deferrals and restamps take their turn, so a deferral's number is
# above every one begun before it and committed after them.
LOCK_DEFERRED = "SELECT generation, txids, cap FROM relay_deferred FOR UPDATE"

# A deferral begins: from this instant every read is in doubt (DEFERRAL_STATE) until it commits.
BEGIN_DEFERRAL = "SELECT nextval('relay_deferral_seq')"

# ... and, in a statement whose snapshot was taken after it began, defers those of $1 that are
# still running: a read that saw one of them end before this snapshot held its horizon at it
# until then (it was running and not deferred), and a read after this commits leaves its rows
# out. $2: the deferral's number. With $1 empty it only settles the generation (a deferral
# that died between its two statements left every read in doubt). The cap: with the first
# deferred transaction, the oldest other one running (RAISE_CAP); raised likewise while every
# transaction deferred before still runs; kept while one has ended and waits for its restamp.
DEFER = f"""
WITH now_ AS (SELECT pg_current_snapshot() AS snap),
cur AS (SELECT txids, cap FROM relay_deferred),
next_ AS (
    SELECT cur.txids || ARRAY(
               SELECT x FROM unnest($1::xid8[]) AS x
                WHERE x IN (SELECT pg_snapshot_xip(now_.snap)) AND x <> ALL(cur.txids)
                ORDER BY x) AS txids
      FROM cur, now_
)
UPDATE relay_deferred d
   SET txids = next_.txids,
       cap = CASE WHEN cardinality(next_.txids) = 0 THEN NULL
                  WHEN cardinality(cur.txids) = 0
                    OR NOT EXISTS (SELECT 1 FROM unnest(cur.txids) AS x
                                    WHERE pg_visible_in_snapshot(x, now_.snap))
                  THEN greatest(cur.cap, {running_floor("now_.snap", "next_.txids")})
                  ELSE cur.cap END,
       generation = greatest(d.generation, $2),
       updated_at = now()
  FROM cur, next_, now_
RETURNING d.txids
"""

# Every few milliseconds while transactions are deferred and none has ended: the cap rises to
# the oldest transaction running now that is not deferred. Every transaction that ends after
# one deferred now is running now or begins later, so it is at or above the cap; the restamp
# keys a deferred transaction's rows just below it (RESTAMP). Synchronous: a cap lost in a
# crash (a prepared transaction survives one) could fall below what reads had passed. One
# round trip (a simple-query script, no parameters).
RAISE_CAP = f"""BEGIN;
SET LOCAL synchronous_commit TO on;
UPDATE relay_deferred d
   SET cap = greatest(d.cap, {running_floor("pg_current_snapshot()", "d.txids")}),
       updated_at = now()
 WHERE cardinality(d.txids) > 0
   AND NOT EXISTS (SELECT 1 FROM unnest(d.txids) AS x
                    WHERE pg_visible_in_snapshot(x, pg_current_snapshot()));
COMMIT"""

# The deferred transactions that have ended move their rows, in one statement, to the key
# just below the cap: txid $1 (the relay's choice: the highest txid below the cap that is not
# deferred) and new positions, in the order they had. Every read's horizon was at most the cap,
# so every event any relay has published sorts below them (a row read with txid $1 has a lower
# position: positions are handed out in order); and every transaction that ended after them
# sorts above (it is at or above the cap, RAISE_CAP). The rows leave the deferred set in the
# same statement: a read sees either their old keys, left out, or the new ones. The ended ones
# and the rows are judged by one snapshot, so no row of an ended transaction is missed. The
# services with rows are walked by _FOUND_STREAMS (an index probe each), the rows of each
# found by the (stream, txid, position) index. Each row is deleted and inserted again, with
# every column as it was but those two (position is GENERATED ALWAYS: an UPDATE could only
# give it the next value in no set order); jsonb_populate_record keeps this right whatever
# columns a later migration adds. Returns the transactions that ended and the rows moved per
# service. Run with the row locked (LOCK_DEFERRED), so the cap and the set stay as read.
RESTAMP = f"""
WITH RECURSIVE ended AS (
    SELECT x FROM relay_deferred d, unnest(d.txids) AS x
     WHERE pg_visible_in_snapshot(x, pg_current_snapshot())
), {_FOUND_STREAMS}, taken AS (
    DELETE FROM outbox_events o
     USING found f
     WHERE o.stream = f.stream AND o.txid = ANY(ARRAY(SELECT x FROM ended))
       AND (SELECT count(*) FROM ended) > 0
    RETURNING o.*
), moved AS (
    INSERT INTO outbox_events OVERRIDING SYSTEM VALUE
    SELECT r.*
      FROM (SELECT * FROM taken ORDER BY txid, position) t,
           LATERAL jsonb_populate_record(NULL::outbox_events, to_jsonb(t) || jsonb_build_object(
               'txid', $1::xid8::text,
               'position', nextval(pg_get_serial_sequence('outbox_events', 'position')))) r
    RETURNING stream
), kept AS (
    UPDATE relay_deferred
       SET txids = ARRAY(SELECT x FROM unnest(txids) AS x
                          WHERE x <> ALL(ARRAY(SELECT x FROM ended)) ORDER BY x),
           cap = CASE WHEN cardinality(txids) > (SELECT count(*) FROM ended) THEN cap END,
           updated_at = now()
     WHERE (SELECT count(*) FROM ended) > 0
    RETURNING 1
)
SELECT ARRAY(SELECT x FROM ended ORDER BY x) AS ended,
       (SELECT coalesce(jsonb_object_agg(stream, n), '{{}}')::text
          FROM (SELECT stream, count(*) AS n FROM moved GROUP BY stream) m) AS moved,
       (SELECT count(*) FROM kept) AS kept
"""

# --- partitions (relay/partitions.py, decision 0014) --------------------------------------

LOAD_PARTITIONINGS = """
SELECT stream, epoch, partitions, requested, history::text AS history
  FROM stream_partitions WHERE stream = ANY($1::text[])
"""

# A new epoch, started at the service's committed cursor by the relay that holds the service:
# every event after the cursor goes to the new epoch's streams.
START_EPOCH = """
UPDATE stream_partitions
   SET epoch = epoch + 1, partitions = requested, requested = NULL,
       since_txid = $2, since_position = $3,
       history = history || jsonb_build_array(
           jsonb_build_object('epoch', epoch + 1, 'partitions', requested)),
       updated_at = now()
 WHERE stream = $1 AND requested IS NOT NULL
RETURNING stream, epoch, partitions, requested, history::text AS history
"""

# Cursors only move forward, so a relay that lost its lease (or a test relay without leases)
# can never move one back. The marks (the watermark each of the service's streams was seen to
# take, as JSON) move with them.
ADVANCE_CURSORS = """
UPDATE relay_cursors c
   SET txid = v.txid, position = v.position, marks = v.marks::jsonb, updated_at = now()
  FROM unnest($1::text[], $2::xid8[], $3::bigint[], $4::text[]) AS v(stream, txid, position, marks)
 WHERE c.stream = v.stream AND (c.txid, c.position) < (v.txid, v.position)
"""

# --- leases (relay/leases.py) -------------------------------------------------------------

# Session-level advisory locks: held until unlocked or until the session ends, which PostgreSQL
# notices at once when the process dies (https://www.postgresql.org/docs/15/explicit-locking.html#ADVISORY-LOCKS).
# hashtext() maps a service to an int4; two services that collide share one lock, which costs
# parallelism, never correctness.
TRY_LOCK = "SELECT pg_try_advisory_lock($1::int4, hashtext($2))"
UNLOCK = "SELECT pg_advisory_unlock($1::int4, hashtext($2))"

# Live relays: every relay holds its presence lock for its whole life.
COUNT_LIVE_RELAYS = """
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = $1::int8::oid
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""

# --- status (relay/leases.py, on the session connection) ----------------------------------

WRITE_STATUS = """
INSERT INTO relay_instances AS r
       (instance_id, host, pid, started_at, heartbeat_at, stopped_at, streams, cursors,
        stream_errors, republishing, published_count, redis_losses, last_error, last_error_at)
VALUES ($1, $2, $3, $4, now(), $5, $6::text[], $7::jsonb, $8::jsonb, $9::jsonb, $10, $11, $12,
        $13)
ON CONFLICT (instance_id) DO UPDATE
   SET heartbeat_at = now(), stopped_at = EXCLUDED.stopped_at, streams = EXCLUDED.streams,
       cursors = EXCLUDED.cursors, stream_errors = EXCLUDED.stream_errors,
       republishing = EXCLUDED.republishing,
       published_count = EXCLUDED.published_count, redis_losses = EXCLUDED.redis_losses,
       last_error = EXCLUDED.last_error, last_error_at = EXCLUDED.last_error_at
"""

# Rows of relays that stopped or went silent a day ago are of no use to the monitor.
FORGET_OLD_INSTANCES = """
DELETE FROM relay_instances WHERE heartbeat_at < now() - interval '1 day'
"""

# --- forget marks (outbox forget-marks) --------------------------------------------------

# After the streams moved to another Redis (a new cluster), the marks describe streams that
# are no longer there: a relay would take their absence for a loss and publish every service
# again from the start. Returns the services whose marks were cleared.
FORGET_MARKS = """
UPDATE relay_cursors SET marks = '{}'::jsonb, updated_at = now()
 WHERE marks <> '{}'::jsonb
RETURNING stream
"""

# A new partition count for a service, for its relay to start at its next batch boundary. A
# service that was never partitioned gets its row (epoch 0: its one stream).
REQUEST_PARTITIONS = """
INSERT INTO stream_partitions AS p (stream, partitions, epoch, requested)
VALUES ($1, 1, 0, $2)
ON CONFLICT (stream) DO UPDATE
   SET requested = CASE WHEN p.partitions = EXCLUDED.requested AND p.epoch > 0 THEN NULL
                        ELSE EXCLUDED.requested END,
       updated_at = now()
RETURNING stream, epoch, partitions, requested, history::text AS history
"""

ALL_PARTITIONINGS = """
SELECT stream, epoch, partitions, requested, history::text AS history
  FROM stream_partitions ORDER BY stream
"""

# --- prune (relay/prune.py) ---------------------------------------------------------------

# One chunk of outbox retention: walk the next rows by position and delete those that are older
# than the cutoff and that the service's cursor has passed (published). A row of a service
# without a cursor, or not yet published, is never deleted. Returns the last position walked,
# the rows deleted and whether any walked row was old enough to delete (the walk stops when
# none is: positions follow insertion time).
PRUNE_CHUNK = """
WITH walked AS (
    SELECT o.position,
           o.occurred_at < $2 AS old,
           o.occurred_at < $2 AND c.stream IS NOT NULL
               AND (o.txid, o.position) <= (c.txid, c.position)
               -- a deferred transaction's rows, ended but not yet restamped, are behind cursors
               -- and unpublished (decision 0020); NULL (no state row) deletes nothing either
               AND o.txid <> ALL((SELECT d.txids FROM relay_deferred d)::xid8[])
               AS published_and_old
      FROM outbox_events o
      LEFT JOIN relay_cursors c ON c.stream = o.stream
     WHERE o.position > $1
     ORDER BY o.position
     LIMIT $3
), deleted AS (
    DELETE FROM outbox_events d USING walked w
     WHERE d.position = w.position AND w.published_and_old
    RETURNING 1
)
SELECT (SELECT max(position) FROM walked) AS last_position,
       (SELECT count(*) FROM deleted) AS deleted,
       (SELECT coalesce(bool_or(old), false) FROM walked) AS any_old
"""
