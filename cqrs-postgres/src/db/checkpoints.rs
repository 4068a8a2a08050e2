//! The statements on the `projections` table, for the runner and for the store's inline
//! projections, and the rows they return (a batch's rows are in `batch_read.rs`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_core::{EventFilter, Position};
use sqlx::{PgConnection, PgExecutor};

use super::error::{Error, Result};
use super::rows::{position, to_i64_saturating};
use super::schema::SchemaName;
use super::statements::{Statement, Statements};
use super::wire;

/// The projections table of one store: its statements, its schema and the channel its
/// changes are announced on. Clones are cheap.
#[derive(Debug, Clone)]
pub(crate) struct Projections {
    statements: Arc<Statements>,
    schema: Arc<str>,
    channel: Arc<str>,
}

/// A version as a bind parameter. Versions are small; one past `i32::MAX` matches no
/// stored row.
pub(crate) fn version_param(version: u32) -> i32 {
    i32::try_from(version).unwrap_or(-1)
}

/// The stream and event types of a filter, as bind parameters.
pub(crate) fn filter_params(filter: &EventFilter) -> (Vec<&str>, Vec<&str>) {
    (
        filter.stream_types.iter().map(AsRef::as_ref).collect(),
        filter.event_types.iter().map(AsRef::as_ref).collect(),
    )
}

/// A position as two bind parameters.
pub(crate) fn position_params(position: Position) -> (i64, i64) {
    (
        to_i64_saturating(position.commit()),
        to_i64_saturating(position.sequence()),
    )
}

/// What a batch moves the checkpoint to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Advance<'a> {
    pub(crate) name: &'a str,
    pub(crate) version: u32,
    pub(crate) from: Position,
    pub(crate) to: Position,
    /// The `state` column's new value (`running`, `caught_up` or `rebuilding`).
    pub(crate) state: &'static str,
    pub(crate) rebuilding: bool,
}

/// An operator's request on a projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Retry,
    Skip,
    Rebuild,
}

impl Control {
    fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Skip => "skip",
            Self::Rebuild => "rebuild",
        }
    }
}

/// One row of `projection_status.sql`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StatusRow {
    pub(crate) name: String,
    pub(crate) version: i32,
    pub(crate) transaction_id: i64,
    pub(crate) sequence: i64,
    pub(crate) active: bool,
    pub(crate) rebuilding: bool,
    pub(crate) rebuild_requested: bool,
    pub(crate) inline: bool,
    pub(crate) owner: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) failed_transaction_id: Option<i64>,
    pub(crate) failed_sequence: Option<i64>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) owned: bool,
    pub(crate) building_beside: bool,
    pub(crate) lag_events: Option<i64>,
    pub(crate) lag_seconds: f64,
}

impl Projections {
    pub(crate) fn new(statements: Arc<Statements>, schema: &SchemaName) -> Self {
        Self {
            statements,
            schema: schema.as_str().into(),
            channel: wire::projections_channel(schema).into(),
        }
    }

    /// The channel checkpoints and operator requests are announced on.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    pub(crate) fn statements(&self) -> &Statements {
        &self.statements
    }

    /// Registers a projection version (the first version of a name becomes the served
    /// one) and returns its lock key.
    pub(crate) async fn register(
        &self,
        conn: &mut PgConnection,
        name: &str,
        version: u32,
        filter: &EventFilter,
        inline: bool,
    ) -> Result<i64> {
        let (stream_types, event_types) = filter_params(filter);
        self.statements
            .get(Statement::ProjectionRegister)
            .bind(name)
            .bind(version_param(version))
            .bind(&stream_types)
            .bind(&event_types)
            .bind(&*self.schema)
            .bind(inline)
            .execute(&mut *conn)
            .await?;
        let (key,): (i64,) = self
            .statements
            .get(Statement::ProjectionLockKey)
            .bind(name)
            .bind(version_param(version))
            .fetch_one(&mut *conn)
            .await?;
        let activated = self
            .statements
            .get(Statement::ProjectionActivateFirst)
            .bind(name)
            .bind(version_param(version))
            .try_execute(&mut *conn)
            .await;
        match activated {
            Ok(_) => Ok(key),
            // Another version of the same name became the served one at the same moment.
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(key),
            Err(error) => Err(Error::database(
                Statement::ProjectionActivateFirst.name(),
                error,
            )),
        }
    }

    /// Records a new owner; returns the checkpoint and whether the version is served, or
    /// `None` when its row is gone.
    pub(crate) async fn claim(
        &self,
        conn: &mut PgConnection,
        name: &str,
        version: u32,
        owner: &str,
    ) -> Result<Option<(Position, bool)>> {
        let row: Option<(i64, i64, bool)> = self
            .statements
            .get(Statement::ProjectionClaim)
            .bind(name)
            .bind(version_param(version))
            .bind(owner)
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|(transaction_id, sequence, active)| {
            Ok((position(transaction_id, sequence)?, active))
        })
        .transpose()
    }

    /// Moves the checkpoint if nobody else moved it; `None` when fenced off.
    pub(crate) async fn advance(
        &self,
        executor: impl PgExecutor<'_>,
        advance: Advance<'_>,
    ) -> Result<Option<bool>> {
        let (from_transaction, from_sequence) = position_params(advance.from);
        let (to_transaction, to_sequence) = position_params(advance.to);
        let row: Option<(bool,)> = self
            .statements
            .get(Statement::ProjectionAdvance)
            .bind(advance.name)
            .bind(version_param(advance.version))
            .bind(from_transaction)
            .bind(from_sequence)
            .bind(to_transaction)
            .bind(to_sequence)
            .bind(advance.state)
            .bind(advance.rebuilding)
            .bind(&*self.channel)
            .fetch_optional(executor)
            .await?;
        Ok(row.map(|(active,)| active))
    }

    /// The served version of `name` and its checkpoint, if one is served; its row stays
    /// locked until the transaction of `conn` ends, so the served checkpoint cannot move
    /// while a switch is decided on it.
    pub(crate) async fn lock_served(
        &self,
        conn: &mut PgConnection,
        name: &str,
    ) -> Result<Option<(u32, Position)>> {
        let row: Option<(i32, i64, i64)> = self
            .statements
            .get(Statement::ProjectionServed)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
        row.map(|(version, transaction_id, sequence)| {
            // A stored version that is not a u32 is older than any of ours.
            let version = u32::try_from(version).unwrap_or(0);
            Ok((version, position(transaction_id, sequence)?))
        })
        .transpose()
    }

    /// Makes `version` the served version of `name`, in place of an older one.
    pub(crate) async fn switch(
        &self,
        conn: &mut PgConnection,
        name: &str,
        version: u32,
    ) -> Result<()> {
        for statement in [
            Statement::ProjectionDeactivate,
            Statement::ProjectionActivate,
        ] {
            self.statements
                .get(statement)
                .bind(name)
                .bind(version_param(version))
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Moves the checkpoint back to the start for a requested rebuild; `false` when no
    /// rebuild was requested any more.
    pub(crate) async fn reset(
        &self,
        conn: &mut PgConnection,
        name: &str,
        version: u32,
    ) -> Result<bool> {
        let row: Option<(bool,)> = self
            .statements
            .get(Statement::ProjectionReset)
            .bind(name)
            .bind(version_param(version))
            .bind(&*self.channel)
            .fetch_optional(&mut *conn)
            .await?;
        Ok(row.is_some())
    }

    /// Records that the projection stopped at `failing`, having reached `at`; `false`
    /// when fenced off.
    pub(crate) async fn fail(
        &self,
        executor: impl PgExecutor<'_>,
        name: &str,
        version: u32,
        at: Position,
        failing: Position,
        error: &str,
    ) -> Result<bool> {
        let (at_transaction, at_sequence) = position_params(at);
        let (failing_transaction, failing_sequence) = position_params(failing);
        let row: Option<(String,)> = self
            .statements
            .get(Statement::ProjectionFail)
            .bind(name)
            .bind(version_param(version))
            .bind(at_transaction)
            .bind(at_sequence)
            .bind(failing_transaction)
            .bind(failing_sequence)
            .bind(error)
            .bind(&*self.channel)
            .fetch_optional(executor)
            .await?;
        Ok(row.is_some())
    }

    /// Applies an operator's request; returns the position afterwards, or `None` when
    /// there was nothing to do.
    pub(crate) async fn control(
        &self,
        executor: impl PgExecutor<'_>,
        name: &str,
        version: u32,
        request: Control,
    ) -> Result<Option<Position>> {
        let row: Option<(i64, i64)> = self
            .statements
            .get(Statement::ProjectionControl)
            .bind(name)
            .bind(version_param(version))
            .bind(request.as_str())
            .bind(&*self.channel)
            .fetch_optional(executor)
            .await?;
        row.map(|(transaction_id, sequence)| position(transaction_id, sequence))
            .transpose()
    }

    /// The checkpoint of the served version of `name` and whether it runs inline, if
    /// the name is known.
    pub(crate) async fn served_checkpoint(
        &self,
        executor: impl PgExecutor<'_>,
        name: &str,
    ) -> Result<Option<(Position, bool)>> {
        let row: Option<(i64, i64, bool)> = self
            .statements
            .get(Statement::ProjectionCheckpoint)
            .bind(name)
            .fetch_optional(executor)
            .await?;
        row.map(|(transaction_id, sequence, inline)| {
            Ok((position(transaction_id, sequence)?, inline))
        })
        .transpose()
    }

    /// The status rows of every projection, or of those named `name`.
    pub(crate) async fn status(
        &self,
        executor: impl PgExecutor<'_>,
        name: Option<&str>,
    ) -> Result<Vec<StatusRow>> {
        self.statements
            .get(Statement::ProjectionStatus)
            .bind(name)
            .fetch_all(executor)
            .await
    }

    /// Deletes the row of a version that is not served; `false` when there was none.
    pub(crate) async fn retire(
        &self,
        executor: impl PgExecutor<'_>,
        name: &str,
        version: u32,
    ) -> Result<bool> {
        let row: Option<(String,)> = self
            .statements
            .get(Statement::ProjectionRetire)
            .bind(name)
            .bind(version_param(version))
            .fetch_optional(executor)
            .await?;
        Ok(row.is_some())
    }
}
