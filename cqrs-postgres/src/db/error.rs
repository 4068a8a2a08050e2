//! The crate's one error type.

use cqrs_core::{BoxError, Position};

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What setting up or running the PostgreSQL store, its projections and views can fail
/// with.
///
/// Methods of the [`EventStore`](cqrs_core::EventStore) trait return
/// [`cqrs_core::Error`]; their PostgreSQL failures are [`cqrs_core::Error::Backend`]
/// holding one of these, which [`Error::from_store`] (or
/// [`cqrs_core::Error::as_backend`]) reaches without a downcast of your own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name spliced into SQL (the store's schema, a document view's table, a
    /// projection's name) is not one the store accepts.
    ///
    /// Fix the configuration.
    #[error("invalid {what} name `{name}`: {reason}")]
    InvalidName {
        /// What the name is for: `schema`, `table` or `projection`.
        what: &'static str,
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
    #[error("statement `{statement}` failed{}", on_constraint(source))]
    Database {
        /// Which statement failed (`src/sql/<name>.sql`, or a view's own statement).
        statement: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// A statement returned a row of a shape the store never writes: the table was
    /// written by something other than this crate.
    #[error("statement `{statement}` returned an unexpected row: {problem}")]
    UnexpectedRow {
        /// Which statement.
        statement: &'static str,
        /// What was wrong with the row.
        problem: String,
    },

    /// An append's connection failed with it in flight every time it was sent, or the
    /// connection of the lookup that was to tell whether it had been written failed too:
    /// it may or may not have been written.
    ///
    /// Retry the command with the same command id: if the append was written, the retry
    /// returns its outcome and writes nothing; if not, it is written then. Without a
    /// command id, a retry may write the events twice (under new event ids).
    #[error(
        "the append to `{stream}` may or may not have been written: sent {sendings} \
         time(s), its connection failed before its outcome was known"
    )]
    OutcomeUnknown {
        /// The stream appended to (`type/id`).
        stream: String,
        /// How many times it was sent.
        sendings: u8,
        /// The last failure.
        #[source]
        source: sqlx::Error,
    },

    /// A stored number does not fit the type the store hands out (for example a negative
    /// transaction id): the table was written by something other than this crate.
    #[error("column `{column}` holds {value}, which is out of range")]
    OutOfRange {
        /// The column.
        column: &'static str,
        /// The stored value.
        value: i64,
    },

    /// Reading the log through the store's `EventStore` methods failed.
    #[error("reading the log failed")]
    Read(#[source] Box<cqrs_core::Error>),

    /// A process manager's step could not be recorded (the event it reacted to does not
    /// encode).
    #[error("process manager `{manager}`, instance `{key}`: its step cannot be recorded")]
    ProcessStep {
        /// The process manager.
        manager: String,
        /// The instance.
        key: String,
        /// Why.
        #[source]
        source: Box<cqrs_core::process::ProcessError>,
    },

    /// A process manager's instance state or command does not round-trip through JSON.
    #[error(
        "process manager `{manager}`, instance `{key}`: its {what} does not round-trip through JSON"
    )]
    ProcessJson {
        /// The process manager.
        manager: String,
        /// The instance.
        key: String,
        /// `state` or `command`.
        what: &'static str,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },

    /// The statement given to [`PgInlineSql::new`](crate::PgInlineSql::new) cannot be an
    /// inline SQL projection.
    ///
    /// Fix the statement.
    #[error("inline SQL projection `{projection}`: {reason}")]
    InvalidInlineSql {
        /// The projection's name.
        projection: &'static str,
        /// Which rule the statement broke.
        reason: &'static str,
    },

    /// The statement of an inline SQL projection failed: the server refused it when the
    /// store checked it (before its first append), or it failed as part of an append,
    /// which then wrote nothing.
    ///
    /// The server's error says why (a syntax error, a missing table, a constraint of the
    /// view). The append statement runs all of the store's inline SQL projections, so a
    /// failure during an append names all of them.
    #[error("inline SQL projection `{projection}` failed{}{}", for_stream(stream.as_deref()), on_constraint(source))]
    InlineSql {
        /// The projection's name (during an append, the names of all of the store's
        /// inline SQL projections, separated by `` `, ` ``).
        projection: String,
        /// The stream appended to (`type/id`), when it failed during an append.
        stream: Option<String>,
        /// The server's error.
        #[source]
        source: sqlx::Error,
    },

    /// An inline projection's handler failed on an event of an append, which then wrote
    /// nothing.
    #[error("inline projection `{projection}` failed on the event at {position}")]
    InlineHandler {
        /// The projection's name.
        projection: &'static str,
        /// Where the event would have been in the log.
        position: Position,
        /// The handler's error.
        #[source]
        source: BoxError,
    },

    /// A hook of a [`PgView`](crate::PgView) (`setup`, `reset`, `flush` with nothing to
    /// flush, `activate`) failed. The runner retries it.
    #[error("the `{hook}` hook of projection `{projection}` failed")]
    Hook {
        /// The projection's name.
        projection: &'static str,
        /// Which hook.
        hook: &'static str,
        /// The hook's error.
        #[source]
        source: BoxError,
    },

    /// Two projections were registered with the same name and version.
    ///
    /// Give one of them another [`NAME`](cqrs_core::Projection::NAME).
    #[error("projection `{name}` version {version} is registered twice")]
    DuplicateProjection {
        /// The projection's name.
        name: &'static str,
        /// Its version.
        version: u32,
    },

    /// A document could not be turned into JSON or back.
    ///
    /// The stored document and the code disagree: make the type accept the stored shape,
    /// or rebuild the view.
    #[error("document `{key}` of view `{view}` does not (de)serialise")]
    Document {
        /// The view's name.
        view: &'static str,
        /// The document's key.
        key: String,
        /// What went wrong.
        #[source]
        source: serde_json::Error,
    },

    /// The projection runner has been shut down.
    #[error("the projection runner has been shut down")]
    ShutDown,
}

/// `" on constraint `name`"` when the server named the constraint a statement broke.
fn on_constraint(source: &sqlx::Error) -> String {
    match source {
        sqlx::Error::Database(db) => db
            .constraint()
            .map(|name| format!(" on constraint `{name}`"))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn for_stream(stream: Option<&str>) -> String {
    stream
        .map(|stream| format!(" for the append to `{stream}`"))
        .unwrap_or_default()
}

impl Error {
    pub(crate) fn database(statement: &'static str, source: sqlx::Error) -> Self {
        Self::Database { statement, source }
    }

    /// The PostgreSQL error inside a [`cqrs_core::Error`] returned by the store, if it
    /// holds one.
    ///
    /// ```
    /// use cqrs_postgres::Error;
    ///
    /// let failed = cqrs_core::Error::backend(Error::ShutDown);
    /// assert!(matches!(Error::from_store(&failed), Some(Error::ShutDown)));
    /// ```
    #[must_use]
    pub fn from_store(error: &cqrs_core::Error) -> Option<&Self> {
        error.as_backend::<Self>()
    }
}

impl From<Error> for cqrs_core::Error {
    fn from(error: Error) -> Self {
        Self::backend(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_is_one_line_naming_what_failed() {
        let cases = [
            (
                Error::database("append", sqlx::Error::PoolClosed),
                "statement `append` failed",
            ),
            (
                Error::InlineSql {
                    projection: "balances".to_owned(),
                    stream: Some("account/a-1".to_owned()),
                    source: sqlx::Error::RowNotFound,
                },
                "inline SQL projection `balances` failed for the append to `account/a-1`",
            ),
            (
                Error::UnexpectedRow {
                    statement: "load_for_command",
                    problem: "version 3 is neither an event nor a snapshot".to_owned(),
                },
                "statement `load_for_command` returned an unexpected row: version 3 is \
                 neither an event nor a snapshot",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }
}
