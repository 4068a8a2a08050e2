-- The position of the newest event a reader of the global log can see now (same
-- visibility rule as read_all.sql).
SELECT transaction_id, sequence
FROM {schema}.events
WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
ORDER BY transaction_id DESC, sequence DESC
LIMIT 1
