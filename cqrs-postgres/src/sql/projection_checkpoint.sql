-- The checkpoint of the served version of a projection, and whether it runs inline.
-- $1 name.
SELECT transaction_id, sequence, inline
FROM {schema}.projections
WHERE name = $1::text AND active
