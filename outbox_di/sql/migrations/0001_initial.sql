-- Version 1: the outbox and inbox tables, their indexes and the NOTIFY triggers (what
-- outbox_di 0.1.0 created). The schema and outbox_schema_version come first, from
-- outbox_di/sql/schema_version.sql; the version row is recorded by the migration runner.
-- Every statement is idempotent, so this file may run on a schema that already has them.

CREATE TABLE IF NOT EXISTS {{schema}}.outbox_events (
    event_id uuid PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    aggregate_type text NOT NULL,
    aggregate_id text NOT NULL,
    event_type text NOT NULL,
    payload bytea NOT NULL,
    headers jsonb NOT NULL DEFAULT '{}'::jsonb,
    ordering_key text,
    status text NOT NULL DEFAULT 'pending',
    created_at timestamptz NOT NULL DEFAULT now(),
    available_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    delivery_attempts integer NOT NULL DEFAULT 0,
    last_error text,
    lock_token uuid,
    locked_at timestamptz,
    CONSTRAINT outbox_events_status_check CHECK (status IN ('pending', 'published', 'dead'))
);

-- Due rows: the claim is an index range scan over pending rows in (available_at, seq) order.
CREATE INDEX IF NOT EXISTS outbox_events_due_idx
    ON {{schema}}.outbox_events (available_at, seq)
    WHERE status = 'pending';

-- Per-key ordering: the head of each ordering key among pending rows.
CREATE INDEX IF NOT EXISTS outbox_events_ordering_idx
    ON {{schema}}.outbox_events (ordering_key, seq)
    WHERE status = 'pending' AND ordering_key IS NOT NULL;

-- Retention: purge of published rows in bounded batches.
CREATE INDEX IF NOT EXISTS outbox_events_published_idx
    ON {{schema}}.outbox_events (published_at)
    WHERE status = 'published';

CREATE TABLE IF NOT EXISTS {{schema}}.inbox_events (
    consumer text NOT NULL,
    event_id text NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    message_id text,
    aggregate_type text NOT NULL DEFAULT '',
    aggregate_id text NOT NULL DEFAULT '',
    event_type text NOT NULL,
    payload bytea NOT NULL,
    headers jsonb NOT NULL DEFAULT '{}'::jsonb,
    ordering_key text,
    status text NOT NULL DEFAULT 'pending',
    created_at timestamptz NOT NULL DEFAULT now(),
    available_at timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    delivery_attempts integer NOT NULL DEFAULT 0,
    last_error text,
    lock_token uuid,
    locked_at timestamptz,
    CONSTRAINT inbox_events_pkey PRIMARY KEY (consumer, event_id),
    CONSTRAINT inbox_events_status_check CHECK (status IN ('pending', 'processed', 'dead'))
);

CREATE INDEX IF NOT EXISTS inbox_events_due_idx
    ON {{schema}}.inbox_events (consumer, available_at, seq)
    WHERE status = 'pending';

CREATE INDEX IF NOT EXISTS inbox_events_processed_idx
    ON {{schema}}.inbox_events (processed_at)
    WHERE status = 'processed';

-- One notification per INSERT statement (not per row): identical notifications of one
-- transaction collapse, so a 100-row enqueue costs one NOTIFY. Workers LISTEN on the channel and
-- fall back to polling, so a missed notification only delays, never loses, an event.
CREATE OR REPLACE FUNCTION {{schema}}.outbox_events_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify({{outbox_channel}}, '');
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION {{schema}}.inbox_events_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify({{inbox_channel}}, '');
    RETURN NULL;
END;
$$;

-- notify:begin
CREATE OR REPLACE TRIGGER outbox_events_notify
    AFTER INSERT ON {{schema}}.outbox_events
    FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.outbox_events_notify();

CREATE OR REPLACE TRIGGER inbox_events_notify
    AFTER INSERT ON {{schema}}.inbox_events
    FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.inbox_events_notify();
-- notify:end
-- no-notify:begin
DROP TRIGGER IF EXISTS outbox_events_notify ON {{schema}}.outbox_events;
DROP TRIGGER IF EXISTS inbox_events_notify ON {{schema}}.inbox_events;
-- no-notify:end
