-- Projection checkpoints: one row per projection name and version.
--
-- Like 0001, this runs with `search_path` set to the store's schema, so the names are
-- unqualified.
--
-- A projection runner commits a projection's view changes and the update of its row in
-- one transaction, guarded by the position it read (fencing), so a view never skips or
-- repeats an event. Exactly one runner process works on a row at a time: the one holding
-- the session advisory lock `lock_key`.
CREATE TABLE projections (
    name                    text        NOT NULL,
    version                 integer     NOT NULL,
    -- The checkpoint: the position (transaction id, sequence) up to which the view is
    -- current. (0, 0) is before the first event.
    transaction_id          bigint      NOT NULL DEFAULT 0,
    sequence                bigint      NOT NULL DEFAULT 0,
    -- 'running', 'caught_up', 'rebuilding' or 'failed', as last written by the owner.
    state                   text        NOT NULL DEFAULT 'running',
    -- The version readers are served. At most one per name (see the index below); a
    -- newer version builds beside it and takes over once it has caught up.
    active                  boolean     NOT NULL DEFAULT false,
    -- Replaying from the start after a reset, until caught up.
    rebuilding              boolean     NOT NULL DEFAULT false,
    -- A rebuild was asked for; the owner resets the view and clears it.
    rebuild_requested       boolean     NOT NULL DEFAULT false,
    -- Run inside the append transaction instead of by a runner: always current.
    inline                  boolean     NOT NULL DEFAULT false,
    -- The projection's filter (empty: all), for lag reports.
    stream_types            text[]      NOT NULL DEFAULT '{}',
    event_types             text[]      NOT NULL DEFAULT '{}',
    -- The key of the session advisory lock its owner holds.
    lock_key                bigint      NOT NULL,
    -- The runner that last took ownership.
    owner                   text,
    -- Why the projection stopped, and the event it stopped at (NULL while healthy).
    error                   text,
    failed_transaction_id   bigint,
    failed_sequence         bigint,
    failed_at               timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projections_pkey PRIMARY KEY (name, version),
    CONSTRAINT projections_version_check CHECK (version >= 1),
    CONSTRAINT projections_state_check
        CHECK (state IN ('running', 'caught_up', 'rebuilding', 'failed')),
    CONSTRAINT projections_failure_check
        CHECK ((error IS NULL) = (failed_transaction_id IS NULL)
           AND (error IS NULL) = (failed_sequence IS NULL))
);

-- One served version per projection name.
CREATE UNIQUE INDEX projections_active_key ON projections (name) WHERE active;
