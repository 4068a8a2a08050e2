use std::fmt;

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What setting up or running the PostgreSQL store can fail with.
///
/// The [`EventStore`](cqrs_core::EventStore) methods return [`cqrs_core::Error`]; their
/// infrastructure failures are [`cqrs_core::Error::Backend`] wrapping one of these, which
/// callers can reach with `downcast_ref::<cqrs_postgres::Error>()` on the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The schema name is not one the store accepts: it must match
    /// `^[a-z_][a-z0-9_]{0,55}$` and not start with `pg_`.
    ///
    /// Fix the configuration.
    #[error("invalid schema name `{name}`: {reason}")]
    InvalidSchema {
        /// The rejected name (cut to 64 characters).
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },

    /// Connecting to PostgreSQL failed.
    ///
    /// Check the URL and that the server is up; usually worth retrying at startup.
    #[error("cannot connect to PostgreSQL")]
    Connect(#[source] sqlx::Error),

    /// Applying the store's migrations failed. Each migration runs in its own
    /// transaction, so the schema is left at the last migration that succeeded.
    #[error("migrating the event store in schema `{schema}` failed")]
    Migrate {
        /// The store's schema.
        schema: String,
        /// What went wrong.
        #[source]
        source: Box<sqlx::migrate::MigrateError>,
    },

    /// A statement failed: connection lost, server shutting down, permissions, a schema
    /// that was never migrated, ….
    ///
    /// Usually transient. An append that fails this way wrote all its events or none; one
    /// whose connection failed was already sent a second time, so when this error comes
    /// from a lost connection, whether it was written is unknown (look for its event ids,
    /// or retry it with a command id).
    #[error("statement `{statement}` failed")]
    Database {
        /// Which of the store's statements failed.
        statement: Statement,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// A stored number does not fit the type the store hands out (for example a negative
    /// transaction id): the table was written by something other than this store.
    #[error("column `{column}` holds {value}, which is out of range")]
    OutOfRange {
        /// The column.
        column: &'static str,
        /// The stored value.
        value: i64,
    },
}

/// The statements the store runs, named in errors and in `db.statement` trace fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Statement {
    /// Creating the schema and applying migrations.
    Migrate,
    /// Appending events.
    Append,
    /// Appending the events of several appends that waited at the same time.
    AppendBatch,
    /// Loading a stream.
    Load,
    /// Loading a snapshot and the events after it.
    LoadForCommand,
    /// Looking up a command id.
    FindCommand,
    /// Finding which event id of an append is already stored.
    FindEventId,
    /// Finding the events of an append sent again after its connection failed.
    FindAppended,
    /// Reading the global log.
    ReadAll,
    /// Reading the head of the global log.
    Head,
    /// Loading a snapshot.
    LoadSnapshot,
    /// Saving a snapshot.
    SaveSnapshot,
    /// Announcing appends with `NOTIFY` (after they committed).
    Notify,
}

impl Statement {
    /// The statement's name, as in `src/sql/<name>.sql`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Migrate => "migrate",
            Self::Append => "append",
            Self::AppendBatch => "append_batch",
            Self::Load => "load",
            Self::LoadForCommand => "load_for_command",
            Self::FindCommand => "find_command",
            Self::FindEventId => "find_event_id",
            Self::FindAppended => "find_appended",
            Self::ReadAll => "read_all",
            Self::Head => "head",
            Self::LoadSnapshot => "load_snapshot",
            Self::SaveSnapshot => "save_snapshot",
            Self::Notify => "notify",
        }
    }
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Error {
    pub(crate) fn database(statement: Statement, source: sqlx::Error) -> Self {
        Self::Database { statement, source }
    }
}

impl From<Error> for cqrs_core::Error {
    fn from(error: Error) -> Self {
        Self::backend(error)
    }
}
