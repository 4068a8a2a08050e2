-- Makes a version the served one when its name has none yet (its first version).
-- $1 name, $2 version. A concurrent activation of another version of the same name
-- fails on projections_active_key instead.
UPDATE {schema}.projections
SET active = true, updated_at = now()
WHERE name = $1::text
  AND version = $2::integer
  AND NOT EXISTS (
      SELECT 1 FROM {schema}.projections WHERE name = $1::text AND active
  )
