"""Every SQL statement of the ``projections`` package, in one place (run through asyncpg).

Statements are written once with ``:name`` parameters and rendered with ``$n`` placeholders by
:class:`outbox.queries.Query`.
"""

from __future__ import annotations

from outbox.queries import Query

# Live batches take this lock shared (per transaction); a rebuild takes it exclusively for its
# whole run, so live consumers wait while the read model is reset and replayed and then find
# the replayed events in the inbox. hashtextextended() maps the name to the bigint key.
LOCK_PROJECTION_SHARED = Query(
    "lock_projection_shared",
    "SELECT pg_advisory_xact_lock_shared(hashtextextended('projection:' || :projection, 0))",
)
LOCK_PROJECTION = Query(
    "lock_projection",
    "SELECT pg_advisory_lock(hashtextextended('projection:' || :projection, 0))",
)
UNLOCK_PROJECTION = Query(
    "unlock_projection",
    "SELECT pg_advisory_unlock(hashtextextended('projection:' || :projection, 0))",
)

# A consumer name is held by one live process at a time: the session lock is released when the
# holder's connection ends, including on SIGKILL.
TRY_LOCK_CONSUMER = Query(
    "try_lock_consumer",
    "SELECT pg_try_advisory_lock(hashtextextended('consumer:' || :projection || ':' || :consumer,"
    " 0))",
)

# The inbox: one statement records the whole batch and says which events are new. It returns one
# row, not a row per event: ``claimed`` (how many rows it inserted) and, only when that is fewer
# than the ``expected`` distinct ids, the ids it inserted. Decoding 500 returned uuids cost the
# consumer about 1.5 µs an event while, on the live path, almost every event is new. The ids go
# in as one comma-separated text (a UUID never holds a comma): asyncpg encodes a uuid[]
# parameter element by element, 0.56 µs an id against 0.21 for the joined text.
_INBOX_INSERT = """
    INSERT INTO projection_inbox (projection, event_id)
    SELECT :projection, e
      FROM {source}unnest(CAST(string_to_array(:event_ids, ',') AS uuid[])) AS e
    ON CONFLICT (projection, event_id) DO NOTHING
    RETURNING event_id
"""
_INBOX_COUNT = """
SELECT count(*) AS claimed,
       CASE WHEN count(*) < :expected THEN array_agg(event_id::text) END AS new_ids
  FROM claimed
"""
INBOX_CLAIM = Query(
    "inbox_claim",
    "WITH claimed AS (" + _INBOX_INSERT.format(source="") + ")" + _INBOX_COUNT,
)
# The same with the projection's shared lock taken first (see LOCK_PROJECTION_SHARED), one round
# trip instead of two: no row can come out of the join, so none is inserted, before the one-row
# ``lock`` CTE has been evaluated.
INBOX_CLAIM_LOCKED = Query(
    "inbox_claim_locked",
    "WITH lock AS MATERIALIZED ("
    "SELECT pg_advisory_xact_lock_shared(hashtextextended('projection:' || :projection, 0))"
    "), claimed AS (" + _INBOX_INSERT.format(source="lock, ") + ")" + _INBOX_COUNT,
)
INBOX_RELEASE = Query(
    "inbox_release",
    """
    DELETE FROM projection_inbox
     WHERE projection = :projection AND event_id = ANY(CAST(:event_ids AS uuid[]))
    """,
)
INBOX_RESET = Query("inbox_reset", "DELETE FROM projection_inbox WHERE projection = :projection")
INBOX_COUNT = Query(
    "inbox_count", "SELECT count(*) FROM projection_inbox WHERE projection = :projection"
)
# Bounded batches keep each prune transaction short.
INBOX_PRUNE = Query(
    "inbox_prune",
    """
    DELETE FROM projection_inbox
     WHERE ctid = ANY(ARRAY(
           SELECT ctid FROM projection_inbox
            WHERE applied_at < now() - make_interval(secs => :retention_s)
            LIMIT :limit))
    """,
)

# --- consumer heartbeats ---

REGISTER_CONSUMER = Query(
    "register_consumer",
    """
    INSERT INTO projection_consumers (projection, consumer, host, pid)
    VALUES (:projection, :consumer, :host, :pid)
    ON CONFLICT (projection, consumer) DO UPDATE
       SET host = EXCLUDED.host, pid = EXCLUDED.pid, started_at = now(), heartbeat_at = now(),
           stopped_at = NULL
    """,
)
HEARTBEAT = Query(
    "heartbeat",
    """
    UPDATE projection_consumers
       SET heartbeat_at = now(),
           processed = processed + :processed,
           skipped = skipped + :skipped,
           failures = failures + :failures,
           dead_lettered = dead_lettered + :dead_lettered,
           last_error = COALESCE(:last_error, last_error)
     WHERE projection = :projection AND consumer = :consumer
    """,
)
CONSUMER_STOPPED = Query(
    "consumer_stopped",
    """
    UPDATE projection_consumers SET stopped_at = now(), heartbeat_at = now()
     WHERE projection = :projection AND consumer = :consumer
    """,
)

# --- checkpoints (rebuild) ---

START_REBUILD = Query(
    "start_rebuild",
    """
    INSERT INTO projection_checkpoints (projection, status, rebuild_started_at, updated_at)
    VALUES (:projection, 'rebuilding', now(), now())
    ON CONFLICT (projection) DO UPDATE
       SET status = 'rebuilding', rebuild_started_at = now(), updated_at = now()
    """,
)
FINISH_REBUILD = Query(
    "finish_rebuild",
    """
    UPDATE projection_checkpoints
       SET status = 'live', rebuilt_at = now(), rebuilt_through_position = :position,
           events_replayed = :events, updated_at = now()
     WHERE projection = :projection
    """,
)

# --- the outbox log, read back (rebuild, trimmed entries, dead-letter re-fetch) ---

_EVENT_COLUMNS = """o.position, o.event_id, o.stream, o.event_type, o.source, o.aggregate_id,
       o.priority, o.payload::text AS payload, o.headers::text AS headers, o.correlation_id,
       o.causation_id, o.user_id, o.traceparent, o.dedup_key, o.occurred_at, o.tenant_id"""

# The rows the process's streams carry (projections/tenants.py): :tenant is its TENANT_ID (NULL:
# the deployment's), :tenant_streamed the services among the query's that have tenant streams.
TENANT_CONDITION = """CASE WHEN CAST(:tenant AS text) IS NULL
            THEN o.tenant_id IS NULL OR NOT o.stream = ANY(CAST(:tenant_streamed AS text[]))
            ELSE o.tenant_id = CAST(:tenant AS text)
                 AND o.stream = ANY(CAST(:tenant_streamed AS text[])) END"""

OUTBOX_EXTENT = Query(
    "outbox_extent",
    f"""
    SELECT count(*) AS events, COALESCE(max(position), 0) AS max_position
      FROM outbox_events o WHERE o.stream = ANY(CAST(:streams AS text[]))
       AND {TENANT_CONDITION}
    """,
)
OUTBOX_PAGE = Query(
    "outbox_page",
    f"""
    SELECT {_EVENT_COLUMNS}
      FROM outbox_events o
     WHERE o.stream = ANY(CAST(:streams AS text[])) AND o.position > :after
       AND o.position <= :until
       AND {TENANT_CONDITION}
     ORDER BY o.position
     LIMIT :limit
    """,
)
OUTBOX_BY_EVENT_IDS = Query(
    "outbox_by_event_ids",
    f"""
    SELECT {_EVENT_COLUMNS}
      FROM outbox_events o
     WHERE o.event_id = ANY(CAST(:event_ids AS uuid[]))
     ORDER BY o.position
    """,
)
# Entries trimmed before we could read them carry no event id: take the stream's events this
# projection has not applied, from within the inbox retention (older ones may have been applied
# and pruned from the inbox) up to the trimmed entries' time (+ clock skew allowance).
OUTBOX_UNAPPLIED = Query(
    "outbox_unapplied",
    f"""
    SELECT {_EVENT_COLUMNS}
      FROM outbox_events o
     WHERE o.stream = :service
       AND o.priority = ANY(CAST(:priorities AS smallint[]))
       AND {TENANT_CONDITION}
       AND o.occurred_at >= now() - make_interval(secs => :retention_s)
       AND o.occurred_at <= to_timestamp(:until_s)
       AND NOT EXISTS (SELECT 1 FROM projection_inbox i
                        WHERE i.projection = :projection AND i.event_id = o.event_id)
     ORDER BY o.position
     LIMIT :limit
    """,
)

# --- partitions (projections/partitions.py, decision 0014) ---

PARTITIONING = Query(
    "partitioning",
    """
    SELECT stream, epoch, partitions, requested, history::text AS history
      FROM stream_partitions WHERE stream = :service
    """,
)
# Every partition of the epochs given gets its row, unowned, from the start of its streams.
ENSURE_PARTITIONS = Query(
    "ensure_partitions",
    """
    INSERT INTO projection_partitions (projection, stream, epoch, partition)
    SELECT :projection, :service, e, p
      FROM unnest(CAST(:epochs AS int[]), CAST(:partitions AS int[])) AS k(e, p)
    ON CONFLICT DO NOTHING
    """,
)
PARTITION_ROWS = Query(
    "partition_rows",
    """
    SELECT epoch, partition, owner, fence, drained,
           lease_until IS NOT NULL AND lease_until > clock_timestamp() AS leased
      FROM projection_partitions
     WHERE projection = :projection AND stream = :service
     ORDER BY epoch, partition
    """,
)
# The members sharing a projection's partitions of a service that are alive now.
LIVE_MEMBERS = Query(
    "live_members",
    """
    SELECT member FROM projection_members
     WHERE projection = :projection AND stream = :service
       AND heartbeat_at > clock_timestamp() - make_interval(secs => :lease_s)
     ORDER BY member
    """,
)
MEMBER_ALIVE = Query(
    "member_alive",
    """
    INSERT INTO projection_members (projection, stream, member)
    VALUES (:projection, :service, :member)
    ON CONFLICT (projection, stream, member) DO UPDATE SET heartbeat_at = now()
    """,
)
MEMBER_GONE = Query(
    "member_gone",
    """
    DELETE FROM projection_members
     WHERE projection = :projection AND stream = :service AND member = :member
    """,
)
# Taking a free partition (or one whose owner's lease ran out) moves its fence on: a batch of
# the former owner then fails its check and is rolled back. Waits for a batch in flight (its
# FOR UPDATE).
CLAIM_PARTITION = Query(
    "claim_partition",
    """
    UPDATE projection_partitions
       SET owner = :owner, fence = fence + 1,
           lease_until = clock_timestamp() + make_interval(secs => :lease_s), updated_at = now()
     WHERE projection = :projection AND stream = :service AND epoch = :epoch
       AND partition = :partition AND NOT drained
       AND (owner IS NULL OR lease_until IS NULL OR lease_until < clock_timestamp())
    RETURNING fence, checkpoints::text AS checkpoints
    """,
)
RENEW_PARTITION = Query(
    "renew_partition",
    """
    UPDATE projection_partitions
       SET lease_until = clock_timestamp() + make_interval(secs => :lease_s)
     WHERE projection = :projection AND stream = :service AND epoch = :epoch
       AND partition = :partition AND owner = :owner AND fence = :fence
    RETURNING 1
    """,
)
RELEASE_PARTITION = Query(
    "release_partition",
    """
    UPDATE projection_partitions SET owner = NULL, lease_until = NULL, updated_at = now()
     WHERE projection = :projection AND stream = :service AND epoch = :epoch
       AND partition = :partition AND owner = :owner AND fence = :fence
    """,
)
# In the batch's transaction, first: the row locked, still this owner's with this fence.
CHECK_FENCE = Query(
    "check_fence",
    """
    SELECT checkpoints::text AS checkpoints FROM projection_partitions
     WHERE projection = :projection AND stream = :service AND epoch = :epoch
       AND partition = :partition AND owner = :owner AND fence = :fence
       FOR UPDATE
    """,
)
# In the batch's transaction, last: where the partition's streams are applied up to.
SAVE_CHECKPOINTS = Query(
    "save_checkpoints",
    """
    UPDATE projection_partitions
       SET checkpoints = CAST(:checkpoints AS jsonb), updated_at = now()
     WHERE projection = :projection AND stream = :service AND epoch = :epoch
       AND partition = :partition AND owner = :owner AND fence = :fence
    """,
)
MARK_DRAINED = Query(
    "mark_drained",
    """
    UPDATE projection_partitions
       SET drained = true, owner = NULL, lease_until = NULL, updated_at = now()
     WHERE projection = :projection AND stream = :service AND epoch = :epoch
       AND partition = :partition AND owner = :owner AND fence = :fence
    """,
)

#: Every statement above, for the schema check at start (outbox/preflight.py).
STATEMENTS = tuple(q.asyncpg_sql for q in list(globals().values()) if isinstance(q, Query))
