-- The lock key of a projection version. $1 name, $2 version.
SELECT lock_key
FROM {schema}.projections
WHERE name = $1::text AND version = $2::integer
