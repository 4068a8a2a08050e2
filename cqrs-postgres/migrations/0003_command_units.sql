-- The outcomes of atomic units (appends to several streams in one commit) sent with a
-- command id: one row per append of the unit, `i` its place (1-based). The unit's first
-- append is recorded in `commands` too, so that the command id names one command
-- whatever is later sent with it.
CREATE TABLE command_units (
    command_id      uuid        NOT NULL,
    i               integer     NOT NULL,
    stream_type     text        NOT NULL,
    stream_id       text        NOT NULL,
    first_version   bigint      NOT NULL,
    stream_version  bigint      NOT NULL,
    transaction_id  bigint      NOT NULL,
    sequence        bigint      NOT NULL,
    CONSTRAINT command_units_pkey PRIMARY KEY (command_id, i)
);
