-- The event store: the global log, idempotency keys and snapshots.
--
-- PgEventStore::migrate runs this with `search_path` set to the store's schema, so the
-- names below are deliberately unqualified: the same migration serves every schema.

-- The append-only log. One row per event.
--
-- Global order is (transaction_id, sequence):
-- * transaction_id is the 64-bit id (xid8) of the transaction that wrote the row. An
--   append is the first write of its transaction, so its id is assigned after it has
--   seen the stream's previous events committed: within a stream, transaction ids grow
--   with versions.
-- * sequence numbers the events of one transaction in append order.
-- Readers only return rows whose transaction_id is below the xmin of their snapshot:
-- every such transaction has ended, so no row can later appear below a position a
-- reader has already passed.
CREATE TABLE events (
    sequence        bigint      GENERATED ALWAYS AS IDENTITY,
    transaction_id  bigint      NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    stream_type     text        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_pkey PRIMARY KEY (transaction_id, sequence),
    -- The single-writer rule: an append that lost a race violates this key.
    CONSTRAINT events_stream_version_key UNIQUE (stream_type, stream_id, stream_version),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_check CHECK (stream_version >= 1),
    CONSTRAINT events_schema_version_check CHECK (schema_version >= 1)
);

-- Idempotency keys: the outcome of every append that carried a command id.
CREATE TABLE commands (
    command_id      uuid        NOT NULL,
    stream_type     text        NOT NULL,
    stream_id       text        NOT NULL,
    first_version   bigint      NOT NULL,
    stream_version  bigint      NOT NULL,
    transaction_id  bigint      NOT NULL,
    sequence        bigint      NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT commands_pkey PRIMARY KEY (command_id)
);

-- The newest snapshot of each stream.
CREATE TABLE snapshots (
    stream_type     text        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    state_version   integer     NOT NULL,
    state           jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT snapshots_pkey PRIMARY KEY (stream_type, stream_id)
);
