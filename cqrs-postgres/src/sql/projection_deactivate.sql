-- First half of a switch: the older served version stops being served, in the
-- transaction of the batch that caught the newer one up. $1 name, $2 the newer version.
--
-- A separate statement from projection_activate.sql, so that the partial unique index
-- never sees two served versions at once.
UPDATE {schema}.projections
SET active = false, updated_at = now()
WHERE name = $1::text AND active AND version < $2::integer
