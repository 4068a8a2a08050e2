-- Registers a projection version (or refreshes its filter) and returns its lock key.
-- $1 name, $2 version, $3 stream types, $4 event types, $5 the store's schema (part of
-- the lock key, so stores in other schemas never contend), $6 inline.
INSERT INTO {schema}.projections AS p
    (name, version, stream_types, event_types, inline, lock_key)
VALUES ($1::text, $2::integer, $3::text[], $4::text[], $6::boolean,
        hashtextextended($5::text || '.' || $1::text || '.' || $2::text, 0))
ON CONFLICT (name, version) DO UPDATE
SET stream_types = excluded.stream_types,
    event_types = excluded.event_types,
    inline = excluded.inline
WHERE p.stream_types IS DISTINCT FROM excluded.stream_types
   OR p.event_types IS DISTINCT FROM excluded.event_types
   OR p.inline IS DISTINCT FROM excluded.inline
RETURNING lock_key
