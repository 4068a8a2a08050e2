//! What a command comes to: [`CommandOutcome`] or [`CommandError`].

use std::fmt;

use uuid::Uuid;

use crate::{Error, Position};

/// What a successful command did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CommandOutcome<E> {
    /// The stream's version after the command (unchanged when it recorded no events).
    pub stream_version: u64,
    /// The events the command recorded, in order (empty when it decided nothing changes).
    pub events: Vec<E>,
    /// Position of the last recorded event: a read-your-writes token. Pass it to a
    /// projection's wait to read a view that includes this command. `None` when nothing
    /// was recorded.
    pub position: Option<Position>,
    /// The command id (the caller's, or a generated one).
    pub command_id: Uuid,
    /// The correlation id carried by the events.
    pub correlation_id: Uuid,
    /// `true` when the command id had been executed before: nothing was appended now, and
    /// `events`, `stream_version` and `position` describe the original execution.
    pub duplicate: bool,
    /// How many times the command was re-run after a concurrency conflict.
    pub retries: u32,
}

/// Why a command did not succeed. Each variant calls for a different reaction.
#[derive(Debug)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// The aggregate refused the command (a business rule). Nothing was written.
    ///
    /// Report it to the user; retrying the same command against the same state gives the
    /// same answer.
    Rejected(E),
    /// Other writers kept changing the aggregate and the retries ran out. Nothing was
    /// written.
    ///
    /// The aggregate is hot: retry later, raise the [`RetryPolicy`](crate::RetryPolicy), or route its
    /// commands through one process (see the backend's in-process serialisation).
    Conflict {
        /// The aggregate type.
        aggregate_type: &'static str,
        /// The aggregate id.
        aggregate_id: String,
        /// How many times the command was tried.
        attempts: u32,
    },
    /// [`Cqrs::dispatch`](crate::Cqrs::dispatch) was given a command that carries no aggregate id. Nothing was
    /// written.
    ///
    /// A bug in the caller: use [`Cqrs::execute`](crate::Cqrs::execute) with an explicit id.
    MissingAggregateId {
        /// The command's name.
        command: &'static str,
    },
    /// The storage failed, or stored data could not be decoded.
    ///
    /// For [`Error::Backend`], retry the command (with the same command id, so a write
    /// that did land is not repeated); for decoding errors, fix the code or the data.
    Store(Error),
}

impl<E: fmt::Display> fmt::Display for CommandError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(_) => f.write_str("command rejected"),
            Self::Conflict {
                aggregate_type,
                aggregate_id,
                attempts,
            } => write!(
                f,
                "aggregate `{aggregate_type}/{aggregate_id}` kept changing: gave up after {attempts} attempts"
            ),
            Self::MissingAggregateId { command } => {
                write!(f, "command `{command}` carries no aggregate id")
            }
            Self::Store(_) => f.write_str("event store failed"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CommandError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Rejected(error) => Some(error),
            Self::Store(error) => Some(error),
            Self::Conflict { .. } | Self::MissingAggregateId { .. } => None,
        }
    }
}

impl<E> From<Error> for CommandError<E> {
    fn from(error: Error) -> Self {
        Self::Store(error)
    }
}

impl<E> CommandError<E> {
    /// The domain error, if the aggregate refused the command.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            Self::Rejected(error) => Some(error),
            _ => None,
        }
    }
}

/// An aggregate's state as loaded from its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The version of the last event folded into it (0 for a new aggregate).
    pub version: u64,
}
