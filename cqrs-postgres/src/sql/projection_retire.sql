-- Forgets a version that is no longer served (its row only: the view's tables are the
-- application's). $1 name, $2 version. Returns the row's name, or no row.
DELETE FROM {schema}.projections
WHERE name = $1::text AND version = $2::integer AND NOT active
RETURNING name
