-- Named queries of the web dashboard (outbox_di.dashboard), loaded with
-- schema.Queries(name, files=("dashboard.sql",)); the rules of queries.sql apply.

-- name: dashboard_published_per_minute
-- Events published per minute since %(since)s and their lag (enqueue -> published), in seconds.
-- The range on published_at with status = 'published' is what the partial index
-- outbox_events_published_idx (the purge's) covers, so an hour is read from the index, not from
-- the whole table.
SELECT date_trunc('minute', published_at) AS minute,
       count(*) AS published,
       avg(EXTRACT(EPOCH FROM published_at - created_at)) AS lag_avg_s,
       max(EXTRACT(EPOCH FROM published_at - created_at)) AS lag_max_s
FROM {{schema}}.outbox_events
WHERE status = 'published'
  AND published_at >= CAST(%(since)s AS timestamptz)
GROUP BY 1
ORDER BY 1;
