-- Stores a snapshot unless a newer one (higher stream version) is stored already.
-- $1 stream_type, $2 stream_id, $3 stream version, $4 state version, $5 state.
INSERT INTO {schema}.snapshots AS s (stream_type, stream_id, stream_version, state_version, state)
VALUES ($1::text, $2::text, $3::bigint, $4::integer, $5::jsonb)
ON CONFLICT (stream_type, stream_id) DO UPDATE
SET stream_version = excluded.stream_version,
    state_version = excluded.state_version,
    state = excluded.state,
    recorded_at = now()
WHERE s.stream_version <= excluded.stream_version
