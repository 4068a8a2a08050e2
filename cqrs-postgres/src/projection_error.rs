//! What the projection runner and the views can fail with, besides the handlers' own
//! errors.

/// Why the projection runner, a [`PgDocumentView`](crate::PgDocumentView) or an inline
/// projection failed, outside the projections' own handlers.
///
/// The runner's methods return [`cqrs_core::Error`]; infrastructure failures are
/// [`cqrs_core::Error::Backend`] wrapping one of these (reach it with
/// `downcast_ref::<PgProjectionError>()` on the source). A handler's failure is
/// [`cqrs_core::Error::Projection`], a wait that took too long
/// [`cqrs_core::Error::Timeout`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgProjectionError {
    /// A statement of the runner failed: connection lost, server shutting down, a schema
    /// whose migrations were not applied, ….
    ///
    /// Usually transient. A batch that fails this way committed nothing: the runner
    /// retries it from the checkpoint.
    #[error("projection statement `{statement}` failed")]
    Database {
        /// Which statement (`src/sql/<name>.sql`, or a view's own statement).
        statement: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
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
        source: cqrs_core::BoxError,
    },

    /// Two projections were registered with the same name and version.
    ///
    /// Give one of them another [`NAME`](cqrs_core::Projection::NAME).
    #[error("projection `{name}` version {version} is registered twice")]
    Duplicate {
        /// The projection's name.
        name: &'static str,
        /// Its version.
        version: u32,
    },

    /// A name spliced into SQL (a document view's table) is not a plain identifier: it
    /// must match `^[a-z_][a-z0-9_]{0,47}$` and not start with `pg_`.
    ///
    /// Fix the name.
    #[error("invalid table name `{name}`: {reason}")]
    InvalidName {
        /// The rejected name (cut to 64 characters).
        name: String,
        /// Which rule it broke.
        reason: &'static str,
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
    /// view). The append statement runs the store's inline SQL projections together, so
    /// a failure during an append names all of them.
    #[error("inline SQL projection `{projection}` failed")]
    InlineSql {
        /// The projection's name (during an append, the names of all of the store's
        /// inline SQL projections, separated by `` `, ` ``).
        projection: String,
        /// The server's error.
        #[source]
        source: sqlx::Error,
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

    /// A stored value the store hands out did not convert (for example a negative
    /// position): the table was written by something other than this crate.
    #[error("a stored projection value is out of range")]
    Stored(#[source] crate::Error),

    /// The runner has been shut down.
    #[error("the projection runner has been shut down")]
    ShutDown,
}

impl PgProjectionError {
    pub(crate) fn database(statement: &'static str, source: sqlx::Error) -> Self {
        Self::Database { statement, source }
    }
}

impl From<crate::Error> for PgProjectionError {
    fn from(error: crate::Error) -> Self {
        Self::Stored(error)
    }
}

impl From<PgProjectionError> for cqrs_core::Error {
    fn from(error: PgProjectionError) -> Self {
        Self::backend(error)
    }
}

/// Checks a name that is spliced into SQL as an identifier.
pub(crate) fn check_identifier(name: &str, max_len: usize) -> Result<(), PgProjectionError> {
    match crate::schema::identifier_problem(name, max_len) {
        Some(reason) => Err(PgProjectionError::InvalidName {
            name: name.chars().take(64).collect(),
            reason,
        }),
        None => Ok(()),
    }
}
