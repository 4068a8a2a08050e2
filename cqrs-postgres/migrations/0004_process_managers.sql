-- Process managers: the history of each instance (one step per reaction: what it
-- reacted to and what it decided), its state as of its last step, the commands its
-- reactions decided and that wait to be sent, and its pending timers. Reactions to events
-- write here in the transaction that moves the manager's checkpoint; reactions to timers
-- and refusals in the transaction that removes the timer or the command.
CREATE TABLE process_instances (
    manager      text        NOT NULL,
    key          text        NOT NULL,
    -- The version of its last step: the state is the fold of steps 1 to `version`.
    version      bigint      NOT NULL,
    -- NULL once the process has finished: later events for its key are passed by.
    state        jsonb,
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT process_instances_pkey PRIMARY KEY (manager, key)
);

-- `input`: the event (as stored), the timer or the refused command reacted to; `sent`:
-- the ids of the commands the reaction sent.
CREATE TABLE process_steps (
    manager      text        NOT NULL,
    key          text        NOT NULL,
    version      bigint      NOT NULL,
    input        jsonb       NOT NULL,
    sent         uuid[]      NOT NULL,
    finished     boolean     NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT process_steps_pkey PRIMARY KEY (manager, key, version)
);

-- `id` is the command id the command is sent with, derived from the reaction's cause.
CREATE TABLE process_outbox (
    id              uuid        NOT NULL,
    seq             bigint      GENERATED ALWAYS AS IDENTITY,
    manager         text        NOT NULL,
    key             text        NOT NULL,
    command         jsonb       NOT NULL,
    correlation_id  uuid,
    attempts        integer     NOT NULL DEFAULT 0,
    next_at         timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT process_outbox_pkey PRIMARY KEY (id)
);
CREATE INDEX process_outbox_order ON process_outbox (manager, key, seq);

-- `id` names one scheduling of the timer: rescheduling gives it a new one.
CREATE TABLE process_timers (
    id       uuid        NOT NULL,
    manager  text        NOT NULL,
    key      text        NOT NULL,
    name     text        NOT NULL,
    due_at   timestamptz NOT NULL,
    CONSTRAINT process_timers_pkey PRIMARY KEY (manager, key, name)
);
CREATE UNIQUE INDEX process_timers_id ON process_timers (id);
CREATE INDEX process_timers_due ON process_timers (manager, due_at);
