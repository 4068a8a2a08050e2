//! Running a statement: one wrapper that logs it, binds its parameters, reads its rows
//! and maps its failure onto [`Error::Database`] naming the statement; and what a
//! failure says about the connection it happened on.

use sqlx::postgres::{PgArguments, PgDatabaseError, PgRow, PgSeverity};
use sqlx::query::Query;
use sqlx::{Encode, Executor, FromRow, Postgres, SqlSafeStr, Type};
use tracing::trace;

use super::error::{Error, Result};

/// A statement ready to bind and run.
#[must_use = "a statement does nothing until it runs"]
pub(crate) struct Sql {
    name: &'static str,
    query: Query<'static, Postgres, PgArguments>,
}

impl std::fmt::Debug for Sql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sql").field("name", &self.name).finish()
    }
}

impl Sql {
    /// The statement `sql`, named `name` in logs and errors.
    pub(crate) fn new(name: &'static str, sql: impl SqlSafeStr) -> Self {
        Self {
            name,
            query: sqlx::query(sql),
        }
    }

    /// The statement's name.
    #[cfg(test)]
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// Binds the next parameter.
    pub(crate) fn bind<'t, T: Encode<'t, Postgres> + Type<Postgres>>(mut self, value: T) -> Self {
        self.query = self.query.bind(value);
        self
    }

    fn start(&self) {
        trace!(target: "cqrs_postgres::query", { db.statement = self.name }, "running statement");
    }

    /// Every row.
    pub(crate) async fn fetch_all<'c, T, E>(self, executor: E) -> Result<Vec<T>>
    where
        T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
        E: Executor<'c, Database = Postgres>,
    {
        let name = self.name;
        self.try_fetch_all(executor)
            .await
            .map_err(|source| Error::database(name, source))
    }

    /// The first row, if any.
    pub(crate) async fn fetch_optional<'c, T, E>(self, executor: E) -> Result<Option<T>>
    where
        T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
        E: Executor<'c, Database = Postgres>,
    {
        let name = self.name;
        self.try_fetch_optional(executor)
            .await
            .map_err(|source| Error::database(name, source))
    }

    /// The one row it must return.
    pub(crate) async fn fetch_one<'c, T, E>(self, executor: E) -> Result<T>
    where
        T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
        E: Executor<'c, Database = Postgres>,
    {
        self.start();
        let name = self.name;
        self.query
            .try_map(|row: PgRow| T::from_row(&row))
            .fetch_one(executor)
            .await
            .map_err(|source| Error::database(name, source))
    }

    /// Runs it for its effect; the number of rows it changed.
    pub(crate) async fn execute<'c, E>(self, executor: E) -> Result<u64>
    where
        E: Executor<'c, Database = Postgres>,
    {
        let name = self.name;
        self.try_execute(executor)
            .await
            .map_err(|source| Error::database(name, source))
    }

    /// Every row, with the driver's own error for the caller to interpret.
    pub(crate) async fn try_fetch_all<'c, T, E>(self, executor: E) -> sqlx::Result<Vec<T>>
    where
        T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
        E: Executor<'c, Database = Postgres>,
    {
        self.start();
        self.query
            .try_map(|row: PgRow| T::from_row(&row))
            .fetch_all(executor)
            .await
    }

    /// The first row, if any, with the driver's own error for the caller to interpret.
    pub(crate) async fn try_fetch_optional<'c, T, E>(self, executor: E) -> sqlx::Result<Option<T>>
    where
        T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
        E: Executor<'c, Database = Postgres>,
    {
        self.start();
        self.query
            .try_map(|row: PgRow| T::from_row(&row))
            .fetch_optional(executor)
            .await
    }

    /// Runs it for its effect, with the driver's own error for the caller to interpret.
    pub(crate) async fn try_execute<'c, E>(self, executor: E) -> sqlx::Result<u64>
    where
        E: Executor<'c, Database = Postgres>,
    {
        self.start();
        self.query
            .execute(executor)
            .await
            .map(|done| done.rows_affected())
    }
}

/// Whether `error` means the connection itself failed (lost, ended by the server, out of
/// step with it) rather than a statement: whatever was in flight on it may or may not
/// have run to its end.
pub(crate) fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(_) => ends_session(error),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Whether the connection `error` happened on can be used again: the server reported a
/// statement error and the session goes on. A lost connection, a protocol error, or a
/// server error that ends the session (`FATAL`, as from `pg_terminate_backend`) leave it
/// unusable.
pub(crate) fn session_survives(error: &sqlx::Error) -> bool {
    server_severity(error).is_some_and(|severity| !ends_session_at(severity))
}

/// A server error of a severity that ends the session.
fn ends_session(error: &sqlx::Error) -> bool {
    server_severity(error).is_some_and(ends_session_at)
}

fn ends_session_at(severity: PgSeverity) -> bool {
    matches!(severity, PgSeverity::Fatal | PgSeverity::Panic)
}

/// The severity of an error the server reported.
fn server_severity(error: &sqlx::Error) -> Option<PgSeverity> {
    match error {
        sqlx::Error::Database(error) => error
            .try_downcast_ref::<PgDatabaseError>()
            .map(PgDatabaseError::severity),
        _ => None,
    }
}
