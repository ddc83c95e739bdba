-- Named queries of the test kit (outbox_di.testing and the project's own tests), never run by
-- the library itself: schema.Queries(name, files=schema.TEST_KIT_FILES) has them beside the
-- library's own (queries.sql, whose rules these follow).

-- name: inbox_contract_effects_create
-- outbox_di.testing.inbox_suite: what the contract suite's transactional
-- handlers write. A plain primary key, so a second effect of one event fails loudly.
CREATE TABLE IF NOT EXISTS {{schema}}.inbox_contract_effects (
    consumer text NOT NULL,
    event_id text NOT NULL,
    note text NOT NULL,
    PRIMARY KEY (consumer, event_id, note)
);

-- name: inbox_contract_effects_insert
INSERT INTO {{schema}}.inbox_contract_effects (consumer, event_id, note)
VALUES (%(consumer)s, %(event_id)s, %(note)s);

-- name: inbox_contract_effects_list
SELECT event_id, note
FROM {{schema}}.inbox_contract_effects
WHERE consumer = %(consumer)s
ORDER BY event_id, note;

-- name: inbox_contract_effects_drop
DROP TABLE IF EXISTS {{schema}}.inbox_contract_effects;

-- name: drop_schema
-- Removes a test's schema.
DROP SCHEMA IF EXISTS {{schema}} CASCADE;

-- name: test_set_headers
-- Overwrites a row's headers with arbitrary JSON, as a foreign writer might.
UPDATE {{schema}}.outbox_events
SET headers = CAST(%(headers)s AS jsonb)
WHERE event_id = CAST(%(event_id)s AS uuid);

-- name: test_terminate_backends
-- Simulates a database outage by killing every connection of one application.
SELECT pg_terminate_backend(pid)
FROM pg_stat_activity
WHERE application_name = %(application_name)s AND pid <> pg_backend_pid();
