//! What the runner reports about each projection.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_core::Position;

use crate::db::{Error, StatusRow, position, to_u32, to_u64};

/// What a projection is doing, as [`PgProjectionRunner::status`](crate::PgProjectionRunner::status)
/// reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PgProjectionState {
    /// Owned by a runner and processing: there are events it has not applied yet.
    Running,
    /// Owned by a runner, with every event it can see applied.
    CaughtUp,
    /// Replaying the log from the start: after a [`rebuild`](crate::PgProjectionRunner::rebuild),
    /// or as a new version built beside the served one (blue/green).
    Rebuilding,
    /// Stopped at an event its handler kept failing on; see
    /// [`PgProjectionStatus::error`] and [`failed_at`](PgProjectionStatus::failed_at).
    /// Resume with [`retry`](crate::PgProjectionRunner::retry) or
    /// [`skip`](crate::PgProjectionRunner::skip).
    Failed,
    /// No runner owns it at the moment.
    Stopped,
    /// Runs inside the append transaction: always current.
    Inline,
}

impl PgProjectionState {
    /// The state's name, as stored in the `state` column where it is one.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::CaughtUp => "caught_up",
            Self::Rebuilding => "rebuilding",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
            Self::Inline => "inline",
        }
    }
}

impl std::fmt::Display for PgProjectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One projection version, as the runner sees it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PgProjectionStatus {
    /// The projection's [`NAME`](cqrs_core::Projection::NAME).
    pub name: String,
    /// Its [`VERSION`](cqrs_core::Projection::VERSION).
    pub version: u32,
    /// Whether this version is the one readers are served.
    pub active: bool,
    /// The checkpoint: the view is current up to here.
    pub position: Position,
    /// What it is doing.
    pub state: PgProjectionState,
    /// How many events it wants are readable in the log past its checkpoint.
    pub lag_events: u64,
    /// How long the oldest of those has been in the log (zero when there is none).
    pub lag: Duration,
    /// The runner that owns it now (see
    /// [`PgProjectionRunnerBuilder::owner`](crate::PgProjectionRunnerBuilder::owner)),
    /// `None` when no runner holds it.
    pub owner: Option<String>,
    /// Why it stopped, when [`state`](Self::state) is [`PgProjectionState::Failed`].
    pub error: Option<String>,
    /// The event it stopped at, when failed.
    pub failed_at: Option<Position>,
    /// When its row last changed.
    pub updated_at: DateTime<Utc>,
}

impl PgProjectionStatus {
    pub(crate) fn from_row(row: StatusRow) -> Result<Self, Error> {
        let lag_events = to_u64("lag_events", row.lag_events.unwrap_or(0))?;
        let state = if row.inline {
            PgProjectionState::Inline
        } else if row.error.is_some() {
            PgProjectionState::Failed
        } else if !row.owned {
            PgProjectionState::Stopped
        } else if row.rebuilding || row.rebuild_requested || (row.building_beside && !row.active) {
            PgProjectionState::Rebuilding
        } else if lag_events == 0 {
            PgProjectionState::CaughtUp
        } else {
            PgProjectionState::Running
        };
        let failed_at = match (row.failed_transaction_id, row.failed_sequence) {
            (Some(transaction_id), Some(sequence)) => Some(position(transaction_id, sequence)?),
            _ => None,
        };
        Ok(Self {
            version: to_u32("version", row.version)?,
            active: row.active,
            position: position(row.transaction_id, row.sequence)?,
            state,
            lag_events,
            lag: Duration::try_from_secs_f64(row.lag_seconds.max(0.0)).unwrap_or_default(),
            owner: if row.owned { row.owner } else { None },
            error: row.error,
            failed_at,
            updated_at: row.updated_at,
            name: row.name,
        })
    }
}
