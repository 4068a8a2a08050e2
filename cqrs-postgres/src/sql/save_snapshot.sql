-- Stores a snapshot unless a newer one (higher stream version) is stored already, and only
-- if the stream has an event at the snapshot's version (a snapshot ahead of its stream
-- would make every command on it conflict).
-- $1 stream_type, $2 stream_id, $3 stream version, $4 state version, $5 state.
--
-- Returns one row: whether the stream reaches the snapshot's version (false: nothing was
-- stored).
WITH reached AS (
    SELECT EXISTS (
        SELECT 1 FROM {schema}.events
        WHERE stream_type = $1::text AND stream_id = $2::text AND stream_version = $3::bigint
    ) AS ok
),
saved AS (
    INSERT INTO {schema}.snapshots AS s
        (stream_type, stream_id, stream_version, state_version, state)
    SELECT $1::text, $2::text, $3::bigint, $4::integer, $5::jsonb
    WHERE (SELECT ok FROM reached)
    ON CONFLICT (stream_type, stream_id) DO UPDATE
    SET stream_version = excluded.stream_version,
        state_version = excluded.state_version,
        state = excluded.state,
        recorded_at = now()
    WHERE s.stream_version <= excluded.stream_version
    RETURNING 1
)
SELECT r.ok
FROM reached AS r
CROSS JOIN (SELECT count(*) AS n FROM saved) AS n
