-- The served version of a name and its checkpoint, its row locked until the transaction
-- ends: a switch to a newer version decides on it, and the served version's next batch
-- waits for that decision. $1 name.
SELECT version, transaction_id, sequence
FROM {schema}.projections
WHERE name = $1::text AND active
FOR UPDATE
