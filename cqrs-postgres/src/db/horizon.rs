//! How far a reader of the log may read: the horizon, below which no event can appear
//! any more.
//!
//! A position is `(transaction id, sequence)`, and a transaction can take its ids, stay
//! open, and commit after transactions with higher ids did. A reader must therefore stop
//! below every transaction that may still add events: the horizon is the lowest id of an
//! in-flight *appender* of this store, or, when there is none, the first id not yet
//! assigned when the reader's snapshot was taken. Transactions that never write to the
//! log (of other schemas, tables or databases) do not hold it back.
//!
//! Appenders are recognised by the lock every write to the `events` table takes on it
//! (`RowExclusiveLock` or stronger). PostgreSQL takes a statement's table locks before
//! the statement runs, and assigns a transaction id only at its first write, so an
//! appender holds the lock before it has an id, as long as the append is the first
//! write of its transaction (which the store's statements are; see the guide's
//! PostgreSQL page for transactions of an application's own). A holder's id is read from
//! its session, where it appears the moment it is assigned.
//!
//! The argument, for a reader's statement with snapshot `S` that reads the lock table
//! after `S` is taken, and an appender `A` with id `x`:
//!
//! - `x` not below `xmax(S)`: `x` was assigned after `S`, and the horizon is at most
//!   `xmax(S)`: `A`'s events lie past it.
//! - `x` below `xmax(S)` and `A` committed before `S`: its events are visible in `S`.
//! - `x` below `xmax(S)` and `A` running at `S` (so `x` is in `S`'s in-progress list):
//!   if `A` still runs when the locks are read, it holds its lock, with `x` in its session
//!   (assigned before `S`, so before the read), and the horizon is at most `x`; if it ended between
//!   `S` and the read, its status is no longer "in progress", and every such id holds the
//!   horizon back too (it may have been an appender). Either way the reader stops below
//!   `x`, and reads `A`'s events once a later snapshot shows them committed.
//!
//! So no event below the horizon becomes visible after the read: a reader that remembers
//! its position never skips one.

/// The CTE `horizon` (one row, column `horizon`: the first transaction id a reader may
/// not read), spliced into the statements that read the log as `{horizon}`. It reads
/// the lock table and the sessions' transaction ids once, and only when the snapshot
/// shows a transaction in progress.
///
/// An appender's id is read two ways: from its session (`pg_stat_activity.backend_xid`,
/// set the moment the id is assigned), and from the lock it holds on its own id (which it
/// takes a moment later, and keeps when prepared for two-phase commit). A session whose
/// id the reader may not see (another role's, without `pg_read_all_stats`) makes the
/// reader fall back, for that read, to stopping below every transaction in progress.
pub(crate) const HORIZON_SQL: &str = "horizon AS MATERIALIZED (
    WITH holders AS MATERIALIZED (
        SELECT w.pid, w.virtualtransaction
        FROM pg_locks AS w
        WHERE w.locktype = 'relation'
          AND w.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND w.relation = '{schema}.events'::regclass
          AND w.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
                         'AccessExclusiveLock')
    ),
    holder_ids AS MATERIALIZED (
        SELECT a.backend_xid::text::bigint AS xid, a.state IS NULL AS hidden
        FROM holders AS h
        LEFT JOIN pg_stat_activity AS a ON a.pid = h.pid
        WHERE h.pid IS NOT NULL
        UNION ALL
        SELECT t.transactionid::text::bigint, false
        FROM holders AS h
        JOIN pg_locks AS t ON t.virtualtransaction = h.virtualtransaction
        WHERE t.locktype = 'transactionid' AND t.mode = 'ExclusiveLock' AND t.granted
    ),
    in_progress AS MATERIALIZED (
        SELECT x::text::bigint AS xid FROM pg_snapshot_xip(pg_current_snapshot()) AS x
    )
    SELECT coalesce(
        CASE
            WHEN NOT EXISTS (SELECT 1 FROM in_progress) THEN NULL
            WHEN EXISTS (SELECT 1 FROM holder_ids WHERE hidden) THEN
                (SELECT min(xid) FROM in_progress)
            ELSE
                (SELECT min(p.xid)
                 FROM in_progress AS p
                 WHERE pg_xact_status(p.xid::text::xid8) <> 'in progress'
                    OR (p.xid & 4294967295) IN (
                        SELECT xid FROM holder_ids WHERE xid IS NOT NULL))
        END,
        pg_snapshot_xmax(pg_current_snapshot())::text::bigint) AS horizon
)";
