-- Named queries of outbox_di.
--
-- Each query starts with a line "-- name: <query_name>" and runs to the next such line.
-- {{schema}} is replaced, once per repository, by the validated and quoted schema name.
-- Parameters are written %(name)s and cast with CAST(... AS type), never with "::", so the same
-- text can be rewritten for asyncpg ($1) and SQLAlchemy (:name) without ambiguity.

-- name: migrate_lock
-- Serializes concurrent migrations of one schema (CREATE ... IF NOT EXISTS is not race-free).
SELECT pg_advisory_xact_lock(hashtext(CAST(%(lock_key)s AS text)));

-- name: schema_version
SELECT max(version) FROM {{schema}}.outbox_schema_version;

-- name: outbox_insert
INSERT INTO {{schema}}.outbox_events
    (event_id, aggregate_type, aggregate_id, event_type, payload, headers, ordering_key,
     available_at)
VALUES
    (CAST(%(event_id)s AS uuid), %(aggregate_type)s, %(aggregate_id)s, %(event_type)s,
     CAST(%(payload)s AS bytea), CAST(%(headers)s AS jsonb), CAST(%(ordering_key)s AS text),
     COALESCE(CAST(%(available_at)s AS timestamptz), now()));

-- name: outbox_insert_many
INSERT INTO {{schema}}.outbox_events
    (event_id, aggregate_type, aggregate_id, event_type, payload, headers, ordering_key,
     available_at)
SELECT m.event_id, m.aggregate_type, m.aggregate_id, m.event_type, m.payload, m.headers,
       m.ordering_key, COALESCE(m.available_at, now())
FROM unnest(
    CAST(%(event_ids)s AS uuid[]),
    CAST(%(aggregate_types)s AS text[]),
    CAST(%(aggregate_ids)s AS text[]),
    CAST(%(event_types)s AS text[]),
    CAST(%(payloads)s AS bytea[]),
    CAST(%(headers)s AS jsonb[]),
    CAST(%(ordering_keys)s AS text[]),
    CAST(%(available_ats)s AS timestamptz[])
) WITH ORDINALITY
    AS m(event_id, aggregate_type, aggregate_id, event_type, payload, headers, ordering_key,
         available_at, position)
ORDER BY m.position;

-- name: outbox_claim
-- Takes up to %(limit)s due rows (pending, available, not leased or lease older than
-- %(stale_before)s), skipping rows another claimer holds, and stamps the caller's lock token.
-- The rows are found by an ordered scan of the due index and updated by their ctid (stable
-- while this statement holds their row locks): no join back through the primary key, whose
-- plan (a hash join over the whole table, once analyzed) grows with the table.
-- RETURNING leaves out what the caller knows: status (pending), published_at (NULL), the lock
-- token and locked_at (its own); empty headers come back as NULL, which the driver does not
-- have to parse as JSON (that parse cost more than the rest of the row).
WITH due AS (
    SELECT ctid
    FROM {{schema}}.outbox_events
    WHERE status = 'pending'
      AND available_at <= CAST(%(now)s AS timestamptz)
      AND (locked_at IS NULL OR locked_at < CAST(%(stale_before)s AS timestamptz))
    ORDER BY available_at, seq
    LIMIT CAST(%(limit)s AS integer)
    FOR UPDATE SKIP LOCKED
)
UPDATE {{schema}}.outbox_events AS e
SET lock_token = CAST(%(lock_token)s AS uuid),
    locked_at = CAST(%(now)s AS timestamptz),
    delivery_attempts = e.delivery_attempts + 1
WHERE e.ctid = ANY(ARRAY(SELECT ctid FROM due))
RETURNING e.event_id, e.seq, e.aggregate_type, e.aggregate_id, e.event_type, e.payload,
          NULLIF(e.headers, CAST('{}' AS jsonb)), e.ordering_key, e.created_at, e.available_at,
          e.delivery_attempts, e.last_error;

-- name: outbox_claim_ordered
-- outbox_claim for per-key ordering: a row with an ordering key is due only while it is the
-- head of its key (no earlier pending row of that key, whatever that row's state: leased, not
-- yet available or failing), so a key's events are published one after the other and a head
-- that is in flight or failing holds back only its own key. A dead row is not pending: the key
-- moves on. Rows without a key are claimed freely.
-- Its cost does not grow with the rows queued behind the heads (docs/publisher.md):
-- * heads: a loose index scan of outbox_events_ordering_idx, one descent per key, visiting at
--   most %(limit)s keys after %(after_key)s (the repository passes where the previous claim
--   stopped, NULL to start from the first key), so every key's head is looked at in turn;
-- * oldest: the first %(limit)s due rows of the due index (oldest first, as outbox_claim), kept
--   when they are keyless or the head of their key, so old heads go first and keyless rows
--   are claimed;
-- * due: both sets, at most 2 x %(limit)s rows found by ctid, checked again, oldest first,
--   locked with SKIP LOCKED and leased as outbox_claim does.
-- The last row returned is not an event: its event_id is NULL and its 13th column is the key to
-- start the next claim after (NULL when the walk reached the last key).
WITH RECURSIVE heads AS (
    (SELECT e.ordering_key, e.ctid AS row_id, e.available_at, e.locked_at, 1 AS visited
     FROM {{schema}}.outbox_events AS e
     WHERE e.status = 'pending'
       AND e.ordering_key IS NOT NULL
       AND (CAST(%(after_key)s AS text) IS NULL OR e.ordering_key > CAST(%(after_key)s AS text))
     ORDER BY e.ordering_key, e.seq
     LIMIT 1)
    UNION ALL
    SELECT n.ordering_key, n.row_id, n.available_at, n.locked_at, h.visited + 1
    FROM heads AS h
    CROSS JOIN LATERAL (
        SELECT e.ordering_key, e.ctid AS row_id, e.available_at, e.locked_at
        FROM {{schema}}.outbox_events AS e
        WHERE e.status = 'pending'
          AND e.ordering_key IS NOT NULL
          AND e.ordering_key > h.ordering_key
        ORDER BY e.ordering_key, e.seq
        LIMIT 1
    ) AS n
    WHERE h.visited < CAST(%(limit)s AS integer)
),
oldest AS (
    SELECT e.ctid AS row_id, e.ordering_key, e.seq
    FROM {{schema}}.outbox_events AS e
    WHERE e.status = 'pending'
      AND e.available_at <= CAST(%(now)s AS timestamptz)
      AND (e.locked_at IS NULL OR e.locked_at < CAST(%(stale_before)s AS timestamptz))
    ORDER BY e.available_at, e.seq
    LIMIT CAST(%(limit)s AS integer)
),
candidates AS (
    SELECT h.row_id
    FROM heads AS h
    WHERE h.available_at <= CAST(%(now)s AS timestamptz)
      AND (h.locked_at IS NULL OR h.locked_at < CAST(%(stale_before)s AS timestamptz))
    UNION ALL
    SELECT o.row_id
    FROM oldest AS o
    WHERE o.ordering_key IS NULL
       OR NOT EXISTS (
           SELECT 1
           FROM {{schema}}.outbox_events AS p
           WHERE p.ordering_key = o.ordering_key
             AND p.status = 'pending'
             AND p.seq < o.seq
       )
),
due AS (
    SELECT e.ctid
    FROM {{schema}}.outbox_events AS e
    WHERE e.ctid = ANY(ARRAY(SELECT row_id FROM candidates))
      AND e.status = 'pending'
      AND e.available_at <= CAST(%(now)s AS timestamptz)
      AND (e.locked_at IS NULL OR e.locked_at < CAST(%(stale_before)s AS timestamptz))
    ORDER BY e.available_at, e.seq
    LIMIT CAST(%(limit)s AS integer)
    FOR UPDATE OF e SKIP LOCKED
),
claimed AS (
    UPDATE {{schema}}.outbox_events AS e
    SET lock_token = CAST(%(lock_token)s AS uuid),
        locked_at = CAST(%(now)s AS timestamptz),
        delivery_attempts = e.delivery_attempts + 1
    WHERE e.ctid = ANY(ARRAY(SELECT ctid FROM due))
    RETURNING e.event_id, e.seq, e.aggregate_type, e.aggregate_id, e.event_type, e.payload,
              NULLIF(e.headers, CAST('{}' AS jsonb)) AS headers, e.ordering_key, e.created_at,
              e.available_at, e.delivery_attempts, e.last_error
)
SELECT c.event_id, c.seq, c.aggregate_type, c.aggregate_id, c.event_type, c.payload, c.headers,
       c.ordering_key, c.created_at, c.available_at, c.delivery_attempts, c.last_error,
       CAST(NULL AS text)
FROM claimed AS c
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       (SELECT h.ordering_key FROM heads AS h WHERE h.visited = CAST(%(limit)s AS integer));

-- name: outbox_mark_published
-- "status NOT IN ('published', 'dead')" means pending (the CHECK allows nothing else), written
-- so that it does not match the due index's predicate: with statistics from a nearly empty
-- table the planner would otherwise scan every pending row of that index instead of looking
-- the batch up by primary key. The same holds for the other batch statements below.
-- %(event_ids)s is the ids joined by commas, one text parameter: psycopg2 adapts a list element
-- by element (~1.6 µs an id here, more than the rest of the mark), a string at once.
UPDATE {{schema}}.outbox_events
SET status = 'published',
    published_at = CAST(%(published_at)s AS timestamptz)
WHERE event_id = ANY(CAST(string_to_array(CAST(%(event_ids)s AS text), ',') AS uuid[]))
  AND lock_token = CAST(%(lock_token)s AS uuid)
  AND status NOT IN ('published', 'dead');

-- name: outbox_reschedule
UPDATE {{schema}}.outbox_events
SET available_at = CAST(%(next_at)s AS timestamptz),
    last_error = CAST(%(error)s AS text),
    lock_token = NULL,
    locked_at = NULL
WHERE event_id = CAST(%(event_id)s AS uuid)
  AND lock_token = CAST(%(lock_token)s AS uuid)
  AND status = 'pending';

-- name: outbox_reschedule_many
-- reschedule for a whole failed batch in one statement (a broker outage fails every event).
UPDATE {{schema}}.outbox_events AS e
SET available_at = f.next_at,
    last_error = f.error,
    lock_token = NULL,
    locked_at = NULL
FROM unnest(
    CAST(%(event_ids)s AS uuid[]),
    CAST(%(next_ats)s AS timestamptz[]),
    CAST(%(errors)s AS text[])
) AS f(event_id, next_at, error)
WHERE e.event_id = f.event_id
  AND e.lock_token = CAST(%(lock_token)s AS uuid)
  AND e.status NOT IN ('published', 'dead');

-- name: outbox_mark_dead
UPDATE {{schema}}.outbox_events
SET status = 'dead',
    last_error = CAST(%(error)s AS text),
    lock_token = NULL,
    locked_at = NULL
WHERE event_id = CAST(%(event_id)s AS uuid)
  AND lock_token = CAST(%(lock_token)s AS uuid)
  AND status = 'pending';

-- name: outbox_release
-- Gives claimed rows back unpublished (graceful stop): due again at once, and the claim does not
-- count as a delivery attempt. %(event_ids)s: joined by commas, as for outbox_mark_published.
UPDATE {{schema}}.outbox_events
SET lock_token = NULL,
    locked_at = NULL,
    delivery_attempts = GREATEST(delivery_attempts - 1, 0)
WHERE event_id = ANY(CAST(string_to_array(CAST(%(event_ids)s AS text), ',') AS uuid[]))
  AND lock_token = CAST(%(lock_token)s AS uuid)
  AND status NOT IN ('published', 'dead');

-- name: outbox_count_pending
SELECT count(*) FROM {{schema}}.outbox_events WHERE status = 'pending';

-- name: outbox_pending_stats
SELECT count(*), min(created_at) FROM {{schema}}.outbox_events WHERE status = 'pending';

-- name: outbox_get
SELECT event_id, seq, aggregate_type, aggregate_id, event_type, payload, headers, ordering_key,
       status, created_at, available_at, published_at, delivery_attempts, last_error,
       lock_token, locked_at
FROM {{schema}}.outbox_events
WHERE event_id = CAST(%(event_id)s AS uuid);

-- name: inbox_insert
INSERT INTO {{schema}}.inbox_events
    (consumer, event_id, message_id, aggregate_type, aggregate_id, event_type, payload, headers,
     ordering_key)
VALUES
    (%(consumer)s, %(event_id)s, CAST(%(message_id)s AS text), %(aggregate_type)s,
     %(aggregate_id)s, %(event_type)s, CAST(%(payload)s AS bytea), CAST(%(headers)s AS jsonb),
     CAST(%(ordering_key)s AS text))
ON CONFLICT (consumer, event_id) DO NOTHING
RETURNING event_id;

-- name: inbox_insert_many
INSERT INTO {{schema}}.inbox_events
    (consumer, event_id, message_id, aggregate_type, aggregate_id, event_type, payload, headers,
     ordering_key)
SELECT CAST(%(consumer)s AS text), m.event_id, m.message_id, m.aggregate_type, m.aggregate_id,
       m.event_type, m.payload, m.headers, m.ordering_key
FROM unnest(
    CAST(%(event_ids)s AS text[]),
    CAST(%(message_ids)s AS text[]),
    CAST(%(aggregate_types)s AS text[]),
    CAST(%(aggregate_ids)s AS text[]),
    CAST(%(event_types)s AS text[]),
    CAST(%(payloads)s AS bytea[]),
    CAST(%(headers)s AS jsonb[]),
    CAST(%(ordering_keys)s AS text[])
) WITH ORDINALITY
    AS m(event_id, message_id, aggregate_type, aggregate_id, event_type, payload, headers,
         ordering_key, position)
ORDER BY m.position
ON CONFLICT (consumer, event_id) DO NOTHING
RETURNING event_id, event_type;

-- name: inbox_insert_dead
-- A message PostgreSQL cannot store as received (a NUL character in an attribute), scrubbed by
-- the receiver and kept as a dead row with the reason: visible to operators and acknowledged,
-- rather than redelivered forever and holding back the rest of its batch.
INSERT INTO {{schema}}.inbox_events
    (consumer, event_id, message_id, aggregate_type, aggregate_id, event_type, payload, headers,
     ordering_key, status, last_error)
VALUES
    (%(consumer)s, %(event_id)s, CAST(%(message_id)s AS text), %(aggregate_type)s,
     %(aggregate_id)s, %(event_type)s, CAST(%(payload)s AS bytea), CAST(%(headers)s AS jsonb),
     CAST(%(ordering_key)s AS text), 'dead', CAST(%(error)s AS text))
ON CONFLICT (consumer, event_id) DO NOTHING
RETURNING event_id;

-- name: inbox_claim
-- Returns only what the claimer does not know already: consumer, status ('pending'),
-- processed_at (NULL), lock_token and locked_at are its own parameters.
WITH due AS (
    SELECT consumer, event_id
    FROM {{schema}}.inbox_events
    WHERE consumer = %(consumer)s
      AND status = 'pending'
      AND available_at <= CAST(%(now)s AS timestamptz)
      AND (locked_at IS NULL OR locked_at < CAST(%(stale_before)s AS timestamptz))
    ORDER BY available_at, seq
    LIMIT CAST(%(limit)s AS integer)
    FOR UPDATE SKIP LOCKED
)
UPDATE {{schema}}.inbox_events AS e
SET lock_token = CAST(%(lock_token)s AS uuid),
    locked_at = CAST(%(now)s AS timestamptz),
    delivery_attempts = e.delivery_attempts + 1
FROM due
WHERE e.consumer = due.consumer AND e.event_id = due.event_id
RETURNING e.event_id, e.seq, e.message_id, e.aggregate_type, e.aggregate_id, e.event_type,
          e.payload, e.headers, e.ordering_key, e.created_at, e.available_at,
          e.delivery_attempts, e.last_error;

-- name: inbox_mark_processed
-- Returns the ids it marked: after a partial lease loss the worker counts exactly those.
UPDATE {{schema}}.inbox_events
SET status = 'processed',
    processed_at = CAST(%(processed_at)s AS timestamptz)
WHERE consumer = %(consumer)s
  AND event_id = ANY(CAST(%(event_ids)s AS text[]))
  AND lock_token = CAST(%(lock_token)s AS uuid)
  AND status = 'pending'
RETURNING event_id;

-- name: inbox_record_error
UPDATE {{schema}}.inbox_events
SET available_at = CAST(%(next_at)s AS timestamptz),
    last_error = CAST(%(error)s AS text),
    lock_token = NULL,
    locked_at = NULL
WHERE consumer = %(consumer)s
  AND event_id = %(event_id)s
  AND lock_token = CAST(%(lock_token)s AS uuid)
  AND status = 'pending';

-- name: inbox_mark_dead
UPDATE {{schema}}.inbox_events
SET status = 'dead',
    last_error = CAST(%(error)s AS text),
    lock_token = NULL,
    locked_at = NULL
WHERE consumer = %(consumer)s
  AND event_id = %(event_id)s
  AND lock_token = CAST(%(lock_token)s AS uuid)
  AND status = 'pending';

-- name: inbox_release
UPDATE {{schema}}.inbox_events
SET lock_token = NULL,
    locked_at = NULL,
    delivery_attempts = GREATEST(delivery_attempts - 1, 0)
WHERE consumer = %(consumer)s
  AND event_id = ANY(CAST(%(event_ids)s AS text[]))
  AND lock_token = CAST(%(lock_token)s AS uuid)
  AND status = 'pending';

-- name: inbox_count_pending
SELECT count(*) FROM {{schema}}.inbox_events WHERE consumer = %(consumer)s AND status = 'pending';

-- name: inbox_count_dead
SELECT count(*) FROM {{schema}}.inbox_events WHERE consumer = %(consumer)s AND status = 'dead';

-- name: inbox_purge_processed
-- The worker's retention: one bounded batch of one consumer's processed rows older than the
-- cut-off (index inbox_events_processed_idx). SKIP LOCKED, so two workers purging at once never
-- wait for each other; each batch is its own short autocommitted statement.
DELETE FROM {{schema}}.inbox_events
WHERE (consumer, event_id) IN (
    SELECT consumer, event_id
    FROM {{schema}}.inbox_events
    WHERE status = 'processed'
      AND processed_at < CAST(%(before)s AS timestamptz)
      AND consumer = %(consumer)s
    ORDER BY processed_at
    LIMIT CAST(%(limit)s AS integer)
    FOR UPDATE SKIP LOCKED
);

-- name: transaction_begin
-- An explicit transaction on the library's (autocommit) aiopg pool: a transactional inbox
-- handler's writes commit with inbox_mark_processed; the Outbox facade's own transaction.
-- Driven by these statements rather than aiopg's Transaction object, which a cancel inside
-- BEGIN or COMMIT leaves open (a ResourceWarning when it is collected).
BEGIN;

-- name: transaction_commit
COMMIT;

-- name: transaction_rollback
ROLLBACK;

-- name: inbox_get
SELECT consumer, event_id, seq, message_id, aggregate_type, aggregate_id, event_type, payload,
       headers, ordering_key, status, created_at, available_at, processed_at, delivery_attempts,
       last_error, lock_token, locked_at
FROM {{schema}}.inbox_events
WHERE consumer = %(consumer)s AND event_id = %(event_id)s;

-- name: catalog_columns
-- The catalog queries take the schema name as a value (never as SQL) and feed `outbox-di check`.
SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity
FROM information_schema.columns
WHERE table_schema = %(schema)s
  AND table_name IN ('outbox_events', 'inbox_events', 'outbox_schema_version');

-- name: catalog_indexes
SELECT tablename, indexname, indexdef
FROM pg_indexes
WHERE schemaname = %(schema)s
  AND tablename IN ('outbox_events', 'inbox_events', 'outbox_schema_version');

-- name: catalog_constraints
SELECT c.relname, con.conname, pg_get_constraintdef(con.oid)
FROM pg_constraint AS con
JOIN pg_class AS c ON c.oid = con.conrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s
  AND c.relname IN ('outbox_events', 'inbox_events', 'outbox_schema_version');

-- name: catalog_triggers
SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid)
FROM pg_trigger AS t
JOIN pg_class AS c ON c.oid = t.tgrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s
  AND NOT t.tgisinternal
  AND c.relname IN ('outbox_events', 'inbox_events');

-- name: catalog_functions
SELECT p.proname, p.prosrc
FROM pg_proc AS p
JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = %(schema)s
  AND p.proname IN ('outbox_events_notify', 'inbox_events_notify');

-- name: listen_outbox
LISTEN {{outbox_channel}};

-- name: listen_inbox
LISTEN {{inbox_channel}};

-- name: inbox_pending_stats
-- The inbox worker's backlog gauges: pending rows of one consumer and the oldest one's age.
SELECT count(*), min(created_at)
FROM {{schema}}.inbox_events
WHERE consumer = %(consumer)s AND status = 'pending';

-- name: outbox_status
-- Operator view (`outbox-di status`): counts per event type; in flight = pending with a live lease.
-- "status = 'pending' OR status = 'dead'", not IN (...): the OR lets the planner combine the
-- due and dead partial indexes instead of reading every published row.
SELECT CAST(NULL AS text) AS consumer,
       event_type,
       count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (
           WHERE status = 'pending' AND locked_at >= CAST(%(stale_before)s AS timestamptz)
       ) AS in_flight,
       -- A retried dead row keeps its last_error but starts again at 0 attempts: not failing.
       count(*) FILTER (
           WHERE status = 'pending' AND last_error IS NOT NULL AND delivery_attempts > 0
       ) AS failing,
       count(*) FILTER (WHERE status = 'dead') AS dead,
       min(created_at) FILTER (WHERE status = 'pending') AS oldest_pending
FROM {{schema}}.outbox_events
WHERE status = 'pending' OR status = 'dead'
GROUP BY event_type
ORDER BY event_type;

-- name: inbox_status
SELECT consumer,
       event_type,
       count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (
           WHERE status = 'pending' AND locked_at >= CAST(%(stale_before)s AS timestamptz)
       ) AS in_flight,
       -- A retried dead row keeps its last_error but starts again at 0 attempts: not failing.
       count(*) FILTER (
           WHERE status = 'pending' AND last_error IS NOT NULL AND delivery_attempts > 0
       ) AS failing,
       count(*) FILTER (WHERE status = 'dead') AS dead,
       min(created_at) FILTER (WHERE status = 'pending') AS oldest_pending
FROM {{schema}}.inbox_events
WHERE status = 'pending' OR status = 'dead'
GROUP BY consumer, event_type
ORDER BY consumer, event_type;

-- name: outbox_dead_list
SELECT CAST(NULL AS text) AS consumer, CAST(event_id AS text), event_type, aggregate_type,
       aggregate_id, delivery_attempts, last_error, created_at
FROM {{schema}}.outbox_events
WHERE status = 'dead'
  AND (CAST(%(event_type)s AS text) IS NULL OR event_type = %(event_type)s)
ORDER BY seq
LIMIT CAST(%(limit)s AS integer);

-- name: inbox_dead_list
SELECT consumer, event_id, event_type, aggregate_type, aggregate_id, delivery_attempts,
       last_error, created_at
FROM {{schema}}.inbox_events
WHERE status = 'dead'
  AND (CAST(%(event_type)s AS text) IS NULL OR event_type = %(event_type)s)
ORDER BY seq
LIMIT CAST(%(limit)s AS integer);

-- name: outbox_dead_retry
-- Dead rows chosen by --all, --event-type or --id become pending again with a fresh count.
UPDATE {{schema}}.outbox_events
SET status = 'pending', available_at = now(), delivery_attempts = 0,
    lock_token = NULL, locked_at = NULL
WHERE status = 'dead'
  AND (
      CAST(%(all)s AS boolean)
      OR event_type = CAST(%(event_type)s AS text)
      OR CAST(event_id AS text) = ANY(CAST(%(event_ids)s AS text[]))
  );

-- name: inbox_dead_retry
UPDATE {{schema}}.inbox_events
SET status = 'pending', available_at = now(), delivery_attempts = 0,
    lock_token = NULL, locked_at = NULL
WHERE status = 'dead'
  AND (
      CAST(%(all)s AS boolean)
      OR event_type = CAST(%(event_type)s AS text)
      OR event_id = ANY(CAST(%(event_ids)s AS text[]))
  );

-- name: outbox_dead_discard
DELETE FROM {{schema}}.outbox_events
WHERE status = 'dead'
  AND (
      CAST(%(all)s AS boolean)
      OR event_type = CAST(%(event_type)s AS text)
      OR CAST(event_id AS text) = ANY(CAST(%(event_ids)s AS text[]))
  );

-- name: inbox_dead_discard
DELETE FROM {{schema}}.inbox_events
WHERE status = 'dead'
  AND (
      CAST(%(all)s AS boolean)
      OR event_type = CAST(%(event_type)s AS text)
      OR event_id = ANY(CAST(%(event_ids)s AS text[]))
  );

-- name: outbox_purge_batch
-- One bounded batch of published rows older than the cut-off (index outbox_events_published_idx):
-- `outbox-di purge` and the worker processes' retention. It locks published rows only, never the
-- pending ones a claim takes; SKIP LOCKED, so two processes purging at once never wait for each
-- other.
DELETE FROM {{schema}}.outbox_events
WHERE event_id IN (
    SELECT event_id
    FROM {{schema}}.outbox_events
    WHERE status = 'published' AND published_at < CAST(%(before)s AS timestamptz)
    ORDER BY published_at
    LIMIT CAST(%(limit)s AS integer)
    FOR UPDATE SKIP LOCKED
);

-- name: inbox_purge_batch
-- The same for processed inbox rows of every consumer (index inbox_events_processed_idx).
DELETE FROM {{schema}}.inbox_events
WHERE (consumer, event_id) IN (
    SELECT consumer, event_id
    FROM {{schema}}.inbox_events
    WHERE status = 'processed' AND processed_at < CAST(%(before)s AS timestamptz)
    ORDER BY processed_at
    LIMIT CAST(%(limit)s AS integer)
    FOR UPDATE SKIP LOCKED
);

-- name: outbox_schemas
-- Every schema holding an outbox_schema_version table (what `outbox-di migrate` creates first),
-- by name: `--all-schemas` and `schemas = "*"` of the relay, the dashboard and the operator
-- commands. The names are values here, never SQL; it names no schema of its own.
SELECT n.nspname
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relname = 'outbox_schema_version'
  AND c.relkind IN ('r', 'p')
ORDER BY n.nspname;
