-- Records the new owner of a projection version and returns its checkpoint.
-- $1 name, $2 version, $3 owner.
UPDATE {schema}.projections
SET owner = $3::text, updated_at = now()
WHERE name = $1::text AND version = $2::integer
RETURNING transaction_id, sequence, active
