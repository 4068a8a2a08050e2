-- Second half of a switch: the newer version becomes the served one and says so.
-- $1 name, $2 version.
UPDATE {schema}.projections
SET active = true, updated_at = now()
WHERE name = $1::text AND version = $2::integer
