//! The connections a store keeps for the statements on a command's path (its load and
//! its append).
//!
//! sqlx's pool checks every connection that comes back to it with a round trip of its own
//! (a `Sync` and its `ReadyForQuery`), even with `test_before_acquire(false)`: for a
//! command made of one short statement, that doubles the messages the server handles.
//! These connections are opened with the pool's connect options and handed back without
//! a check; one that has been idle for a while is checked before its next use. One that
//! failed in any way but a statement error the server reported, or whose statement was
//! abandoned mid-way (its future dropped), is closed instead of reused: its protocol state
//! is unknown.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgRow;
use sqlx::{
    AssertSqlSafe, ConnectOptions, Connection as _, FromRow, PgConnection, PgPool, Postgres,
};
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::{debug, warn};

use crate::db::{Sql, connection_lost, session_survives};

/// Up to `max` connections, opened on demand and kept open while the store lives.
pub(crate) struct CommandConnections {
    max: usize,
    /// Run once on each connection opened: puts the store's schema first on its
    /// `search_path` (see `SchemaName::session_search_path`).
    session: Arc<str>,
    /// Connections ready for use.
    idle: Mutex<Vec<Idle>>,
    permits: Semaphore,
}

/// A connection ready for use.
struct Idle {
    conn: PgConnection,
    /// When it was last handed back.
    since: Instant,
    /// Whether it must be checked before its next use whatever its idle time: another
    /// connection was lost meanwhile, and whatever ended that one (a server restart, an
    /// operator ending sessions) may have ended this one too.
    suspect: bool,
}

/// A connection idle for longer than this is checked (a round trip) before use: the
/// server, or something between, may have closed it meanwhile.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(10);

/// When a leased connection is checked with a round trip before use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// When it has been idle long, or another connection was lost since it was.
    IfIdle,
    /// Always: for a statement sent again after its connection failed, which must not
    /// land on another connection that failed the same way.
    Always,
}

impl fmt::Debug for CommandConnections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let idle = self.idle.lock().map_or(0, |idle| idle.len());
        f.debug_struct("CommandConnections")
            .field("max", &self.max)
            .field("idle", &idle)
            .finish()
    }
}

impl CommandConnections {
    pub(crate) fn new(max: usize, session: Arc<str>) -> Self {
        Self {
            max,
            session,
            idle: Mutex::new(Vec::new()),
            // More permits than the semaphore holds would be as good as no limit anyway.
            permits: Semaphore::new(max.min(Semaphore::MAX_PERMITS)),
        }
    }

    /// How many connections the store may open (0: commands run on the pool).
    #[cfg(test)]
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// A connection for one command statement (or transaction): an idle one, or a new
    /// one opened with the pool's options; waits while `max` are in use. With `max` 0, a
    /// connection of the pool. With [`Check::Always`], the connection answered a ping
    /// just now (or is new).
    pub(crate) async fn lease(
        &self,
        pool: &PgPool,
        check: Check,
    ) -> Result<Lease<'_>, sqlx::Error> {
        if self.max == 0 {
            let mut conn = pool.acquire().await?;
            if check == Check::Always && conn.ping().await.is_err() {
                // The pool hands out the connections it has; this one is closed, and
                // the next is checked too.
                conn.close_on_drop();
                drop(conn);
                conn = pool.acquire().await?;
                conn.ping().await?;
            }
            return Ok(Lease {
                owner: self,
                conn: Some(Held::Pool(conn)),
                reusable: false,
                _permit: None,
            });
        }
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let conn = loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match idle {
                Some(idle)
                    if check == Check::IfIdle
                        && !idle.suspect
                        && idle.since.elapsed() < CHECK_AFTER_IDLE =>
                {
                    break idle.conn;
                }
                Some(Idle { mut conn, .. }) => match conn.ping().await {
                    Ok(()) => break conn,
                    // Closed meanwhile: the next idle one is checked too.
                    Err(error) => debug!(%error, "an idle command connection was closed"),
                },
                None => {
                    let mut conn = pool.connect_options().connect().await?;
                    sqlx::raw_sql(AssertSqlSafe(Arc::clone(&self.session)))
                        .execute(&mut conn)
                        .await?;
                    break conn;
                }
            }
        };
        Ok(Lease {
            owner: self,
            conn: Some(Held::Own(conn)),
            reusable: false,
            _permit: Some(permit),
        })
    }

    /// Runs the read `query` (made anew for each sending) on a connection leased with
    /// `check`. A read whose connection fails is sent once more, on a connection checked
    /// just before: it changes nothing, so sending it again is always safe.
    pub(crate) async fn read<T, F>(
        &self,
        pool: &PgPool,
        mut check: Check,
        query: F,
    ) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
        F: Fn() -> Sql,
    {
        let mut sent_again = false;
        loop {
            let rows = match self.lease(pool, check).await {
                Ok(mut lease) => {
                    let rows = match lease.conn() {
                        Ok(conn) => query().try_fetch_all(conn).await,
                        Err(error) => Err(error),
                    };
                    lease.release(&rows);
                    rows
                }
                Err(error) => Err(error),
            };
            match rows {
                Err(error) if !sent_again && connection_lost(&error) => {
                    warn!(%error, "a read lost its connection; reading again");
                    self.check_idle_before_use();
                    check = Check::Always;
                    sent_again = true;
                }
                rows => return rows,
            }
        }
    }

    /// Has every idle connection checked before its next use: one of them was just found
    /// lost (see [`Idle::suspect`]).
    pub(crate) fn check_idle_before_use(&self) {
        for idle in self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter_mut()
        {
            idle.suspect = true;
        }
    }
}

enum Held {
    Own(PgConnection),
    /// Returned to the pool when dropped, which checks it.
    Pool(PoolConnection<Postgres>),
}

/// A connection taken for one command. Dropped without [`release`](Self::release), it is
/// closed (or, from the pool, handed back to the pool's own check).
pub(crate) struct Lease<'a> {
    owner: &'a CommandConnections,
    conn: Option<Held>,
    reusable: bool,
    _permit: Option<SemaphorePermit<'a>>,
}

impl Lease<'_> {
    /// Whether the connection is one of the store's own, whose session has the store's
    /// schema first on its `search_path` (a pool's connection has the pool's path).
    pub(crate) fn in_store_schema(&self) -> bool {
        matches!(self.conn, Some(Held::Own(_)))
    }

    pub(crate) fn conn(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        match self.conn.as_mut() {
            Some(Held::Own(conn)) => Ok(conn),
            Some(Held::Pool(conn)) => Ok(&mut **conn),
            None => Err(sqlx::Error::PoolClosed),
        }
    }

    /// Hands the connection back for reuse after `result`, if the connection came through
    /// it in a known state: success, or a statement error the server reported (after
    /// which the session goes on). A lost connection, a protocol error, or a server error
    /// that ends the session (`FATAL`, as from `pg_terminate_backend`) closes it.
    pub(crate) fn release<T>(mut self, result: &Result<T, sqlx::Error>) {
        self.reusable = match result {
            Ok(_) => true,
            Err(error) => session_survives(error),
        };
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.reusable
            && let Some(Held::Own(conn)) = self.conn.take()
        {
            self.owner
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Idle {
                    conn,
                    since: Instant::now(),
                    suspect: false,
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_limit_is_accepted() {
        for max in [0, 1, 16, usize::MAX] {
            assert_eq!(CommandConnections::new(max, Arc::from("")).max(), max);
        }
    }
}
