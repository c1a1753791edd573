"""Every SQL statement the monitor runs, in one place. All times are on the database clock."""

from __future__ import annotations

from outbox.audit import AUDIT_STATEMENTS

# The oldest write transaction of this database (relay.queries.HORIZON, decisions 0019 and
# 0020): a running transaction that has written something (has an xid), or a prepared one (no
# pid; its gid instead). It holds the relays back until they defer it, and its own events and
# vacuum until it ends. Those of other databases of the server never hold the relay and are not
# shown. ``xid32``: its 32-bit xid, to match against the deferred ones (DEFERRED_TRANSACTIONS).
OLDEST_WRITE_TRANSACTION = """
SELECT pid, age_s, query_start, state, query, datname, gid, xid32 FROM (
    SELECT pid,
           extract(epoch FROM now() - xact_start) AS age_s,
           query_start,
           state,
           left(query, 200) AS query,
           datname,
           NULL::text AS gid,
           age(backend_xid) AS xid_age,
           backend_xid::text AS xid32
      FROM pg_stat_activity
     WHERE backend_xid IS NOT NULL
       AND datname = current_database()
       AND pid <> pg_backend_pid()
    UNION ALL
    SELECT NULL, extract(epoch FROM now() - prepared), NULL, 'prepared', NULL, database, gid,
           age(transaction), transaction::text
      FROM pg_prepared_xacts
     WHERE database = current_database()
) t
 ORDER BY xid_age DESC
 LIMIT 1
"""

# The transactions the relays have deferred (relay_deferred, decision 0020), as 32-bit xids.
DEFERRED_TRANSACTIONS = """
SELECT coalesce(array_agg((x::text::numeric % 4294967296)::text), '{}') AS xids
  FROM relay_deferred d, unnest(d.txids) AS x
"""

DATABASE_NOW = "SELECT extract(epoch FROM clock_timestamp()) AS now_s"

# Per service a live relay reports publishing again (decision 0011), the cursor it has reached:
# the lowest, if several report it. "Live": not stopped, and a heartbeat younger than the
# parameter ``{alive}`` (seconds). The stored cursor only moves forward, so while Redis's losses
# are published again, what lies between this cursor and the stored one is not in Redis.
_REPUBLISHING = """
    SELECT DISTINCT ON (r.stream) r.stream, r.txid, r.position
      FROM (SELECT e.key AS stream,
                   split_part(e.value, ':', 1)::xid8 AS txid,
                   split_part(e.value, ':', 2)::bigint AS position
              FROM relay_instances i, jsonb_each_text(i.republishing) e
             WHERE i.stopped_at IS NULL
               AND i.heartbeat_at > clock_timestamp() - make_interval(secs => {alive})) r
     ORDER BY r.stream, r.txid, r.position"""

# Per outbox stream: the relay's cursor, how many committed events lie beyond it (counted up to a
# cap so a huge backlog stays cheap) and the age of the oldest of them. Row comparisons on
# (txid, position) use the (stream, txid, position) index.
#
# The backlog counts from the stored cursor, unless a live relay (a heartbeat younger than $2
# seconds) reports that it is publishing the service again because Redis lost events it had
# acknowledged (decision 0011): the stored cursor only moves forward, so the backlog then counts
# from the cursor the relay reports.
OUTBOX_STREAMS = """
WITH RECURSIVE s(stream) AS (
    SELECT min(stream) FROM outbox_events
    UNION ALL
    SELECT (SELECT min(stream) FROM outbox_events WHERE stream > s.stream)
      FROM s WHERE s.stream IS NOT NULL
), streams AS (
    SELECT stream FROM s WHERE stream IS NOT NULL
    UNION
    SELECT stream FROM relay_cursors
), republishing AS ({republishing}
), cursors AS (
    SELECT st.stream, c.txid, c.position, c.updated_at, rp.stream IS NOT NULL AS republishing,
           coalesce(rp.txid, c.txid, '0'::xid8) AS from_txid,
           coalesce(rp.position, c.position, 0) AS from_position
      FROM streams st
      LEFT JOIN relay_cursors c ON c.stream = st.stream
      LEFT JOIN republishing rp ON rp.stream = st.stream
)
SELECT c.stream,
       c.txid::text AS cursor_txid,
       c.position AS cursor_position,
       extract(epoch FROM clock_timestamp() - c.updated_at) AS cursor_age_s,
       c.republishing,
       (SELECT count(*) FROM (
            SELECT 1 FROM outbox_events e
             WHERE e.stream = c.stream
               AND (e.txid, e.position) > (c.from_txid, c.from_position)
             LIMIT $1) AS beyond) AS unpublished,
       (SELECT extract(epoch FROM clock_timestamp() - e.occurred_at)
          FROM outbox_events e
         WHERE e.stream = c.stream
           AND (e.txid, e.position) > (c.from_txid, c.from_position)
         ORDER BY e.txid, e.position
         LIMIT 1) AS oldest_unpublished_age_s
  FROM cursors c
 ORDER BY c.stream
""".replace("{republishing}", _REPUBLISHING.format(alive="$2"))

# The tenants' streams the relay has published to (TENANT_STREAMS): the keys of the watermarks it
# commits with each service's cursor (relay_cursors.marks), so no keyspace SCAN is needed. $1 is
# a LIKE pattern of the tenant keys; the caller parses each key (keys.parse_tenant_stream).
TENANT_STREAM_KEYS = """
SELECT DISTINCT k.key
  FROM relay_cursors c, jsonb_object_keys(c.marks) AS k(key)
 WHERE k.key LIKE $1
"""

# Per service and tenant, committed events of the tenant beyond the service's stored cursor:
# the same bounded scan as OUTBOX_STREAMS's count (at most $1 rows per service, through the
# (stream, txid, position) index), grouped by tenant. Counted from the stored cursor only (not
# from the one a relay publishing Redis's losses again reports).
TENANT_BACKLOG = """
WITH RECURSIVE s(stream) AS (
    SELECT min(stream) FROM outbox_events
    UNION ALL
    SELECT (SELECT min(stream) FROM outbox_events WHERE stream > s.stream)
      FROM s WHERE s.stream IS NOT NULL
), cursors AS (
    SELECT s.stream, coalesce(c.txid, '0'::xid8) AS txid, coalesce(c.position, 0) AS position
      FROM s LEFT JOIN relay_cursors c ON c.stream = s.stream
     WHERE s.stream IS NOT NULL
)
SELECT c.stream, b.tenant_id, count(*) AS unpublished
  FROM cursors c
 CROSS JOIN LATERAL (
       SELECT e.tenant_id FROM outbox_events e
        WHERE e.stream = c.stream AND (e.txid, e.position) > (c.txid, c.position)
        ORDER BY e.txid, e.position
        LIMIT $1) b
 WHERE b.tenant_id IS NOT NULL
 GROUP BY c.stream, b.tenant_id
 ORDER BY b.tenant_id, c.stream
"""

# Relay instances that are running, or stopped within the last hour.
RELAYS = """
SELECT instance_id, host, pid, started_at, streams, cursors, stream_errors, republishing,
       published_count, redis_losses, last_error, last_error_at, stopped_at,
       extract(epoch FROM clock_timestamp() - heartbeat_at) AS heartbeat_age_s
  FROM relay_instances
 WHERE stopped_at IS NULL OR stopped_at > clock_timestamp() - interval '1 hour'
 ORDER BY instance_id
"""

# Projection consumers that are running, or stopped within the last hour.
PROJECTION_CONSUMERS = """
SELECT projection, consumer, host, pid, started_at, processed, skipped, failures, dead_lettered,
       last_error, stopped_at,
       extract(epoch FROM clock_timestamp() - heartbeat_at) AS heartbeat_age_s
  FROM projection_consumers
 WHERE stopped_at IS NULL OR stopped_at > clock_timestamp() - interval '1 hour'
 ORDER BY projection, consumer
"""

PROJECTION_CHECKPOINTS = """
SELECT projection, status, rebuilt_at, events_replayed FROM projection_checkpoints
"""

# Processing latency per projection of $3: applied_at - occurred_at of the newest $2 events it
# applied in the last $1 seconds (the collector bounds $1 by the recent apply rate, so the scan
# reads about as many rows as it keeps). applied_at is the apply transaction's now() and
# occurred_at emit()'s clock_timestamp(), both on the database clock. Inbox rows arrive in
# applied_at order, so the BRIN index on applied_at narrows each projection's scan to the recent
# block ranges (a Bitmap Heap Scan; https://www.postgresql.org/docs/15/brin-intro.html), and the
# LIMIT lets each sampled row find its event through the unique index on outbox_events.event_id
# (a nested loop). now(), not clock_timestamp(): a volatile bound cannot be an index condition.
# Events published directly to Redis have no outbox row and are not counted.
PROCESSING_LATENCY = """
SELECT p.projection,
       count(*) AS events,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY l.s) AS p50_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY l.s) AS p95_s,
       max(l.s) AS max_s
  FROM unnest($3::text[]) AS p(projection)
 CROSS JOIN LATERAL (
       SELECT i.event_id, i.applied_at
         FROM projection_inbox i
        WHERE i.projection = p.projection
          AND i.applied_at > now() - make_interval(secs => $1)
        ORDER BY i.applied_at DESC
        LIMIT $2) r
  JOIN outbox_events e ON e.event_id = r.event_id
 CROSS JOIN LATERAL (SELECT greatest(0, extract(epoch FROM r.applied_at - e.occurred_at))) l(s)
 GROUP BY p.projection
"""

# The events of one correlation (of tenant $4 only, unless it is null), with where each one is
# now. Published: the relay's cursor has
# passed it, the cursor a live relay (heartbeat younger than $3 s) reports while it publishes
# again what Redis lost, else the stored one.
EVENTS_BY_CORRELATION = """
WITH republishing AS ({republishing}
)
SELECT e.position, e.event_id, e.stream, e.event_type, e.source, e.priority, e.aggregate_id,
       e.causation_id, e.user_id, e.occurred_at, e.payload::text AS payload, e.tenant_id,
       c.stream IS NOT NULL
           AND (e.txid, e.position) <= (coalesce(rp.txid, c.txid),
                                        coalesce(rp.position, c.position)) AS published,
       coalesce(rp.stream IS NOT NULL AND (e.txid, e.position) > (rp.txid, rp.position)
                AND (e.txid, e.position) <= (c.txid, c.position), false) AS republishing,
       coalesce((SELECT array_agg(i.projection ORDER BY i.projection)
                   FROM projection_inbox i WHERE i.event_id = e.event_id), '{}') AS applied_by
  FROM outbox_events e
  LEFT JOIN relay_cursors c ON c.stream = e.stream
  LEFT JOIN republishing rp ON rp.stream = e.stream
 WHERE e.correlation_id = $1
   AND ($4::text IS NULL OR e.tenant_id = $4)
 ORDER BY e.txid, e.position
 LIMIT $2
""".replace("{republishing}", _REPUBLISHING.format(alive="$3"))

# The projections that applied events published directly (no outbox row): by event id.
APPLIED_BY = """
SELECT event_id, array_agg(projection ORDER BY projection) AS applied_by
  FROM projection_inbox
 WHERE event_id = ANY($1::uuid[])
 GROUP BY event_id
"""

# Partitioned services (decision 0014) and who owns each partition of each projection.
PARTITIONINGS = """
SELECT stream, epoch, partitions, requested, history::text AS history FROM stream_partitions
"""
PARTITION_OWNERS = """
SELECT projection, stream, epoch, partition, owner, fence, drained,
       extract(epoch FROM lease_until - clock_timestamp()) AS lease_left_s
  FROM projection_partitions
 ORDER BY projection, stream, epoch, partition
"""

#: Every statement above, and the audit log's, for the schema check at start
#: (outbox/preflight.py).
STATEMENTS = (
    *AUDIT_STATEMENTS,
    PARTITIONINGS,
    PARTITION_OWNERS,
    OLDEST_WRITE_TRANSACTION,
    DEFERRED_TRANSACTIONS,
    DATABASE_NOW,
    OUTBOX_STREAMS,
    TENANT_STREAM_KEYS,
    TENANT_BACKLOG,
    RELAYS,
    PROJECTION_CONSUMERS,
    PROJECTION_CHECKPOINTS,
    PROCESSING_LATENCY,
    EVENTS_BY_CORRELATION,
    APPLIED_BY,
)
