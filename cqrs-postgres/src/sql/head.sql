-- The position of the newest event a reader of the global log can see now (same
-- visibility rule as read_all.sql).
WITH {horizon}
SELECT transaction_id, sequence
FROM {schema}.events
WHERE transaction_id < (SELECT horizon FROM horizon)
ORDER BY transaction_id DESC, sequence DESC
LIMIT 1
