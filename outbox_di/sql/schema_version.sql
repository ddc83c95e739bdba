-- The schema's version table, owned by the migration runner (outbox_di.database.migrate), not
-- by a numbered migration: one row per applied version, with the checksum of the migration file
-- (see outbox_di.schema.checksum). outbox_di 0.1.0 made the table without the checksum column;
-- `version_table` adds it, and the next `outbox-di migrate` fills it in (`fill_checksum`).
-- Rendered by outbox_di.schema like the migrations: {{schema}} is the validated, quoted name.

-- name: version_table
-- The schema and its version table, created (or brought up to date) before any migration.
CREATE SCHEMA IF NOT EXISTS {{schema}};

CREATE TABLE IF NOT EXISTS {{schema}}.outbox_schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now(),
    checksum text
);

ALTER TABLE {{schema}}.outbox_schema_version ADD COLUMN IF NOT EXISTS checksum text;

-- name: record_version
-- {{version}} and {{checksum}} are the library's own number and sha256 hex digest.
INSERT INTO {{schema}}.outbox_schema_version AS v (version, checksum)
VALUES ({{version}}, '{{checksum}}')
ON CONFLICT (version) DO UPDATE SET checksum = EXCLUDED.checksum WHERE v.checksum IS NULL;

-- name: applied_versions
SELECT version, checksum FROM {{schema}}.outbox_schema_version ORDER BY version;

-- name: applied_versions_without_checksum
SELECT version, CAST(NULL AS text) FROM {{schema}}.outbox_schema_version ORDER BY version;

-- name: current_version
SELECT max(version) FROM {{schema}}.outbox_schema_version;

-- name: fill_checksum
UPDATE {{schema}}.outbox_schema_version SET checksum = %(checksum)s
WHERE version = %(version)s AND checksum IS NULL;
