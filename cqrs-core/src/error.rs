use std::error::Error as StdError;

use uuid::Uuid;

use crate::{CodecError, Position};

/// A boxed error from a storage backend or a user's projection.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// An error and its sources on one line, outermost first, joined by `: ` (for logs, a
/// status column, a test's message).
///
/// ```
/// use std::fmt;
/// use cqrs_core::error_chain;
///
/// #[derive(Debug)]
/// struct Refused;
/// impl fmt::Display for Refused {
///     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
///         f.write_str("connection refused")
///     }
/// }
/// impl std::error::Error for Refused {}
///
/// #[derive(Debug)]
/// struct CannotLoad(Refused);
/// impl fmt::Display for CannotLoad {
///     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
///         f.write_str("cannot load the stream")
///     }
/// }
/// impl std::error::Error for CannotLoad {
///     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
///         Some(&self.0)
///     }
/// }
///
/// assert_eq!(error_chain(&CannotLoad(Refused)), "cannot load the stream: connection refused");
/// ```
pub fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a storage backend (and the machinery around it) can fail with.
///
/// Backends map their own failures onto these variants so that callers handle one type
/// whatever the storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream's version was not the one the append expected: another writer got there
    /// first. Nothing was written.
    ///
    /// Reload the stream and decide again; the command pipeline does this for you
    /// according to its [`RetryPolicy`](crate::RetryPolicy).
    #[error("stream `{stream_type}/{stream_id}` is not at the expected version {expected}")]
    Conflict {
        /// Type of the stream that was appended to.
        stream_type: String,
        /// Id of the stream that was appended to.
        stream_id: String,
        /// The version the append expected the stream to be at.
        expected: u64,
    },

    /// The append was malformed (no events, an empty stream id, schema version zero, …).
    /// Nothing was written.
    ///
    /// This is a bug in the caller: fix the request rather than retrying it.
    #[error("invalid append to stream `{stream_type}/{stream_id}`: {reason}")]
    InvalidAppend {
        /// Type of the stream the append targeted.
        stream_type: String,
        /// Id of the stream the append targeted.
        stream_id: String,
        /// Which rule the request broke.
        reason: &'static str,
    },

    /// The store does not offer `operation` (see its documentation).
    #[error("this store does not offer `{operation}`")]
    Unsupported {
        /// What was asked for.
        operation: &'static str,
    },

    /// The append's command id was recorded by an append to another stream: a command id
    /// names one command, of one aggregate. Nothing was written.
    ///
    /// A bug in the caller (an id reused for another command): give each command an id
    /// of its own.
    #[error("command id {command_id} was used on stream `{stream_type}/{stream_id}`")]
    CommandIdInUse {
        /// The command id.
        command_id: Uuid,
        /// Type of the stream the id was recorded with.
        stream_type: String,
        /// Id of the stream the id was recorded with.
        stream_id: String,
    },

    /// An event id in the append is already stored. Event ids are unique across the whole
    /// store. Nothing was written.
    #[error("event id {event_id} is already stored")]
    DuplicateEventId {
        /// The id that was already taken.
        event_id: Uuid,
    },

    /// A stored event could not be turned into the domain type: unknown event type, a
    /// schema version with no upcast path, or a payload that does not deserialise.
    ///
    /// The stored data and the code disagree. Retrying will not help; deploy code that
    /// knows the stored shape (an upcaster) or repair the data. A reader of the global log
    /// steps over the event by reading on after its [`position`](Self::Decode::position).
    #[error(
        "cannot decode event `{event_type}` v{schema_version} at version {stream_version} \
         of stream `{stream_type}/{stream_id}`"
    )]
    Decode {
        /// Type of the stream holding the event.
        stream_type: String,
        /// Id of the stream holding the event.
        stream_id: String,
        /// The event's version within its stream.
        stream_version: u64,
        /// The stored event type name.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
        /// The event's position in the global log, when it was read from there.
        position: Option<Position>,
        /// What went wrong.
        #[source]
        source: Box<CodecError>,
    },

    /// A stored stream skips a version: the log was written by something that does not
    /// keep the store's contract (versions start at 1 and are contiguous).
    ///
    /// Repair the data; retrying will not help.
    #[error("stream `{stream_type}/{stream_id}` jumps to version {found} where {expected} was due")]
    BrokenStream {
        /// Type of the stream.
        stream_type: String,
        /// Id of the stream.
        stream_id: String,
        /// The version due next.
        expected: u64,
        /// The version found instead.
        found: u64,
    },

    /// A domain event could not be serialised into a payload. Nothing was written.
    #[error("cannot encode event `{event_type}`")]
    Encode {
        /// The event type name.
        event_type: &'static str,
        /// What went wrong.
        #[source]
        source: Box<CodecError>,
    },

    /// An aggregate's state could not be serialised for a snapshot or deserialised from
    /// one. Snapshots are an optimisation: the pipeline falls back to a full replay when a
    /// stored snapshot does not deserialise.
    #[error("cannot (de)serialise the snapshot of stream `{stream_type}/{stream_id}`")]
    Snapshot {
        /// Type of the stream.
        stream_type: String,
        /// Id of the stream.
        stream_id: String,
        /// What went wrong.
        #[source]
        source: serde_json::Error,
    },

    /// A snapshot was refused before anything was stored: its numbers do not fit the
    /// store's columns, or it is ahead of its stream.
    ///
    /// A bug in the caller (the pipeline never makes such a snapshot).
    #[error("invalid snapshot of stream `{stream_type}/{stream_id}`: {reason}")]
    InvalidSnapshot {
        /// Type of the stream.
        stream_type: String,
        /// Id of the stream.
        stream_id: String,
        /// Which rule the snapshot broke.
        reason: &'static str,
    },

    /// The storage backend failed (connection lost, database error, …). Whether anything
    /// was written is stated by the backend's documentation: the backends in this
    /// workspace write all events of an append or none.
    ///
    /// It displays as the backend's own error, which [`as_backend`](Self::as_backend)
    /// reaches. Usually transient: retry the whole command, with the same command id so
    /// that a write that did land is not repeated.
    #[error(transparent)]
    Backend(BoxError),
}

impl Error {
    /// Wraps a backend's own error.
    pub fn backend(error: impl Into<BoxError>) -> Self {
        Self::Backend(error.into())
    }

    /// The backend's own error, when this is an [`Error::Backend`] holding an `E`.
    ///
    /// ```
    /// # #[derive(Debug, thiserror::Error)]
    /// # #[error("disk full")]
    /// # struct DiskFull;
    /// let error = cqrs_core::Error::backend(DiskFull);
    /// assert!(error.as_backend::<DiskFull>().is_some());
    /// assert_eq!(error.to_string(), "disk full");
    /// ```
    #[must_use]
    pub fn as_backend<E: StdError + 'static>(&self) -> Option<&E> {
        match self {
            Self::Backend(error) => error.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// Whether this is an optimistic-concurrency [`Error::Conflict`].
    #[must_use]
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }
}

/// Why a projection's runner, or a wait on it, failed: the read side's error.
///
/// The storage contract's failures stay [`Error`]s, held in [`ProjectionError::Store`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// A projection's handler failed on an event. The projection stops just before it.
    ///
    /// Fix the handler or the data, then resume the projection.
    #[error("projection `{projection}` failed at position {position}")]
    Handler {
        /// The projection's name.
        projection: &'static str,
        /// Position of the event the handler failed on.
        position: Position,
        /// The handler's error.
        #[source]
        source: BoxError,
    },

    /// Waiting for a projection to reach a position took longer than allowed.
    ///
    /// The write has happened; the view is behind. Retry the read later or report the
    /// lag to the client.
    #[error("projection `{projection}` did not reach position {target} in time (at {reached})")]
    Timeout {
        /// The projection waited on.
        projection: String,
        /// The position waited for.
        target: Position,
        /// The position the projection had reached when the wait gave up.
        reached: Position,
    },

    /// The runner does not know the projection waited on: it is not the one a memory
    /// projector runs, or no backend runner registered it in time (a misspelt name, a
    /// projection not deployed yet).
    ///
    /// Fix the name, or start a runner that runs the projection.
    #[error("no runner knows projection `{projection}`")]
    Unknown {
        /// The projection's name.
        projection: String,
    },

    /// Reading the log, or decoding an event of it, failed.
    #[error(transparent)]
    Store(#[from] Error),

    /// The runner's own storage failed (a backend's projection runner): it displays as
    /// the backend's error, which [`as_backend`](Self::as_backend) reaches.
    #[error(transparent)]
    Backend(BoxError),
}

impl ProjectionError {
    /// Wraps a backend's own error.
    pub fn backend(error: impl Into<BoxError>) -> Self {
        Self::Backend(error.into())
    }

    /// The backend's own error, when this is a [`ProjectionError::Backend`] (or a
    /// [`ProjectionError::Store`] holding an [`Error::Backend`]) holding an `E`.
    #[must_use]
    pub fn as_backend<E: StdError + 'static>(&self) -> Option<&E> {
        match self {
            Self::Backend(error) => error.downcast_ref::<E>(),
            Self::Store(error) => error.as_backend(),
            _ => None,
        }
    }

    /// Whether this is a [`ProjectionError::Timeout`].
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }
}
