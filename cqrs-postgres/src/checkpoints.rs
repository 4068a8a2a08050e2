//! The statements on the `projections` table, and the rows they return.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_core::{EventEnvelope, EventFilter, Position};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, PgExecutor, Row};
use tracing::trace;
use uuid::Uuid;

use crate::projection_error::PgProjectionError;
use crate::rows::{EventRow, position, to_i64_saturating};
use crate::schema::SchemaName;

type Result<T, E = PgProjectionError> = std::result::Result<T, E>;

/// The projection statements, with the schema spliced in once. Every other value is a
/// bind parameter.
#[derive(Debug)]
pub(crate) struct ProjectionQueries {
    schema: String,
    /// The NOTIFY channel checkpoints and operator requests are announced on.
    pub(crate) channel: String,
    register: Arc<str>,
    lock_key: Arc<str>,
    activate_first: Arc<str>,
    claim: Arc<str>,
    batch: Arc<str>,
    advance: Arc<str>,
    deactivate: Arc<str>,
    activate: Arc<str>,
    reset: Arc<str>,
    fail: Arc<str>,
    control: Arc<str>,
    checkpoint: Arc<str>,
    status: Arc<str>,
    retire: Arc<str>,
}

impl ProjectionQueries {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let quoted = schema.quoted();
        let render = |sql: &str| Arc::<str>::from(sql.replace("{schema}", &quoted));
        Self {
            schema: schema.as_str().to_owned(),
            channel: format!("{}_proj", schema.as_str()),
            register: render(include_str!("sql/projection_register.sql")),
            lock_key: render(include_str!("sql/projection_lock_key.sql")),
            activate_first: render(include_str!("sql/projection_activate_first.sql")),
            claim: render(include_str!("sql/projection_claim.sql")),
            batch: render(include_str!("sql/projection_batch.sql")),
            advance: render(include_str!("sql/projection_advance.sql")),
            deactivate: render(include_str!("sql/projection_deactivate.sql")),
            activate: render(include_str!("sql/projection_activate.sql")),
            reset: render(include_str!("sql/projection_reset.sql")),
            fail: render(include_str!("sql/projection_fail.sql")),
            control: render(include_str!("sql/projection_control.sql")),
            checkpoint: render(include_str!("sql/projection_checkpoint.sql")),
            status: render(include_str!("sql/projection_status.sql")),
            retire: render(include_str!("sql/projection_retire.sql")),
        }
    }
}

fn log_statement(statement: &'static str) {
    trace!(target: "cqrs_postgres::query", { db.statement = statement }, "running statement");
}

fn version_param(version: u32) -> i32 {
    // Versions are small; one past i32::MAX matches no stored row.
    i32::try_from(version).unwrap_or(-1)
}

fn filter_params(filter: &EventFilter) -> (Vec<&str>, Vec<&str>) {
    (
        filter.stream_types.iter().map(AsRef::as_ref).collect(),
        filter.event_types.iter().map(AsRef::as_ref).collect(),
    )
}

fn bind_position(position: Position) -> (i64, i64) {
    (
        to_i64_saturating(position.commit()),
        to_i64_saturating(position.sequence()),
    )
}

/// Registers a projection version and returns its lock key.
pub(crate) async fn register(
    conn: &mut PgConnection,
    queries: &ProjectionQueries,
    name: &str,
    version: u32,
    filter: &EventFilter,
    inline: bool,
) -> Result<i64> {
    let (stream_types, event_types) = filter_params(filter);
    log_statement("projection_register");
    sqlx::query(AssertSqlSafe(Arc::clone(&queries.register)))
        .bind(name)
        .bind(version_param(version))
        .bind(&stream_types)
        .bind(&event_types)
        .bind(&queries.schema)
        .bind(inline)
        .execute(&mut *conn)
        .await
        .map_err(|e| PgProjectionError::database("projection_register", e))?;
    log_statement("projection_lock_key");
    let key = sqlx::query_scalar::<_, i64>(AssertSqlSafe(Arc::clone(&queries.lock_key)))
        .bind(name)
        .bind(version_param(version))
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| PgProjectionError::database("projection_lock_key", e))?;
    log_statement("projection_activate_first");
    match sqlx::query(AssertSqlSafe(Arc::clone(&queries.activate_first)))
        .bind(name)
        .bind(version_param(version))
        .execute(&mut *conn)
        .await
    {
        Ok(_) => {}
        // Another version of the same name became the served one at the same moment.
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {}
        Err(error) => {
            return Err(PgProjectionError::database(
                "projection_activate_first",
                error,
            ));
        }
    }
    Ok(key)
}

/// Records a new owner; returns the checkpoint and whether the version is served.
pub(crate) async fn claim(
    conn: &mut PgConnection,
    queries: &ProjectionQueries,
    name: &str,
    version: u32,
    owner: &str,
) -> Result<Option<(Position, bool)>> {
    log_statement("projection_claim");
    let row = sqlx::query_as::<_, (i64, i64, bool)>(AssertSqlSafe(Arc::clone(&queries.claim)))
        .bind(name)
        .bind(version_param(version))
        .bind(owner)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| PgProjectionError::database("projection_claim", e))?;
    row.map(|(transaction_id, sequence, active)| Ok((position(transaction_id, sequence)?, active)))
        .transpose()
}

/// What a worker reads at the start of a batch.
#[derive(Debug)]
pub(crate) struct Batch {
    /// The projection's row; `None` when it is gone.
    pub(crate) header: Option<Header>,
    /// The events after the worker's position, in log order, each with its position; their
    /// payloads are still JSON text.
    pub(crate) events: Vec<(Position, cqrs_core::Result<EventEnvelope<String>>)>,
}

/// The projection's row, as a batch sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) position: Position,
    /// The newest event a reader can see now (START when the log is empty).
    pub(crate) head: Position,
    /// The last event of the window read (wanted or not), if it held any.
    pub(crate) covered: Option<Position>,
    /// How many events the window held (wanted or not).
    pub(crate) scanned: u64,
    pub(crate) active: bool,
    pub(crate) rebuilding: bool,
    pub(crate) rebuild_requested: bool,
    pub(crate) failed: bool,
    /// The served version of the projection's name, if any.
    pub(crate) active_version: Option<i32>,
}

/// A row of `projection_batch.sql`: the header (`is_header`) or an event.
#[derive(Debug)]
struct BatchRow {
    is_header: bool,
    transaction_id: i64,
    sequence: i64,
    head_transaction_id: Option<i64>,
    head_sequence: Option<i64>,
    active: Option<bool>,
    rebuilding: Option<bool>,
    rebuild_requested: Option<bool>,
    failed: Option<bool>,
    active_version: Option<i32>,
    wanted: bool,
    stream_type: Option<String>,
    stream_id: Option<String>,
    stream_version: Option<i64>,
    event_id: Option<Uuid>,
    event_type: Option<String>,
    schema_version: Option<i32>,
    /// As text: deserialised straight into the projection's event type.
    payload: Option<String>,
    /// As text: parsed straight into [`Metadata`], with no intermediate JSON value.
    metadata: Option<String>,
    recorded_at: Option<DateTime<Utc>>,
}

/// By position rather than by name, and without sqlx's per-value type check: a batch has
/// thousands of rows of 20 columns, and the statement gives every column the type read
/// here (the decoders still validate the bytes: a mismatch is an error, not a panic).
impl<'r> sqlx::FromRow<'r, PgRow> for BatchRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            is_header: row.try_get_unchecked(0)?,
            transaction_id: row.try_get_unchecked(1)?,
            sequence: row.try_get_unchecked(2)?,
            head_transaction_id: row.try_get_unchecked(3)?,
            head_sequence: row.try_get_unchecked(4)?,
            active: row.try_get_unchecked(5)?,
            rebuilding: row.try_get_unchecked(6)?,
            rebuild_requested: row.try_get_unchecked(7)?,
            failed: row.try_get_unchecked(8)?,
            active_version: row.try_get_unchecked(9)?,
            wanted: row.try_get_unchecked(10)?,
            stream_type: row.try_get_unchecked(11)?,
            stream_id: row.try_get_unchecked(12)?,
            stream_version: row.try_get_unchecked(13)?,
            event_id: row.try_get_unchecked(14)?,
            event_type: row.try_get_unchecked(15)?,
            schema_version: row.try_get_unchecked(16)?,
            payload: row.try_get_unchecked(17)?,
            metadata: row.try_get_unchecked(18)?,
            recorded_at: row.try_get_unchecked(19)?,
        })
    }
}

impl BatchRow {
    fn into_header(self) -> Result<Header, crate::Error> {
        let head = match (self.head_transaction_id, self.head_sequence) {
            (Some(transaction_id), Some(sequence)) => position(transaction_id, sequence)?,
            _ => Position::START,
        };
        Ok(Header {
            position: position(self.transaction_id, self.sequence)?,
            head,
            covered: None,
            scanned: 0,
            active: self.active.unwrap_or(false),
            rebuilding: self.rebuilding.unwrap_or(false),
            rebuild_requested: self.rebuild_requested.unwrap_or(false),
            failed: self.failed.unwrap_or(false),
            active_version: self.active_version,
        })
    }

    /// The envelope of an event row, its payload still JSON text, converted as the store
    /// converts its own rows ([`EventRow::into_recorded`]): metadata of the wrong shape is
    /// a typed [`cqrs_core::Error::Decode`] naming the stream, version and type.
    fn into_envelope(self) -> cqrs_core::Result<EventEnvelope<String>> {
        let (
            Some(stream_type),
            Some(stream_id),
            Some(stream_version),
            Some(event_id),
            Some(event_type),
            Some(schema_version),
            Some(payload),
            Some(metadata),
            Some(recorded_at),
        ) = (
            self.stream_type,
            self.stream_id,
            self.stream_version,
            self.event_id,
            self.event_type,
            self.schema_version,
            self.payload,
            self.metadata,
            self.recorded_at,
        )
        else {
            return Err(crate::Error::OutOfRange {
                column: "event_id",
                value: 0,
            }
            .into());
        };
        EventRow {
            sequence: self.sequence,
            transaction_id: self.transaction_id,
            stream_version,
            event_id,
            event_type,
            schema_version,
            payload: Value::Null,
            metadata,
            recorded_at,
        }
        .into_envelope(stream_type, stream_id, payload)
    }
}

/// Which part of the log a batch reads: the next `limit` events after `after`, of which
/// those past `until` are left for a later batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) after: Position,
    pub(crate) limit: usize,
    pub(crate) until: Option<Position>,
}

/// Reads the projection's row, the head and a window of the log, keeping the events
/// `filter` wants, in one snapshot.
///
/// An event row that does not convert into an envelope (metadata of the wrong shape) is
/// an error against that event, which the worker handles like a failing handler.
pub(crate) async fn read_batch(
    conn: &mut PgConnection,
    queries: &ProjectionQueries,
    name: &str,
    version: u32,
    filter: &EventFilter,
    window: Window,
) -> Result<Batch> {
    let (stream_types, event_types) = filter_params(filter);
    let (transaction_id, sequence) = bind_position(window.after);
    log_statement("projection_batch");
    let rows = sqlx::query_as::<_, BatchRow>(AssertSqlSafe(Arc::clone(&queries.batch)))
        .bind(name)
        .bind(version_param(version))
        .bind(transaction_id)
        .bind(sequence)
        .bind(&stream_types)
        .bind(&event_types)
        .bind(i64::try_from(window.limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| PgProjectionError::database("projection_batch", e))?;
    let mut batch = Batch {
        header: None,
        events: Vec::with_capacity(rows.len()),
    };
    let mut covered = None;
    let mut scanned = 0;
    for row in rows {
        if row.is_header {
            batch.header = Some(row.into_header()?);
            continue;
        }
        let at = position(row.transaction_id, row.sequence)?;
        if window.until.is_some_and(|until| at > until) {
            continue;
        }
        scanned += 1;
        covered = covered.max(Some(at));
        if row.wanted {
            batch.events.push((at, row.into_envelope()));
        }
    }
    if let Some(header) = &mut batch.header {
        header.covered = covered;
        header.scanned = scanned;
    }
    // The rows arrive in log order; a stable sort of sorted input is one pass.
    batch.events.sort_by_key(|(at, _)| *at);
    Ok(batch)
}

/// What a batch moves the checkpoint to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Advance<'a> {
    pub(crate) name: &'a str,
    pub(crate) version: u32,
    pub(crate) from: Position,
    pub(crate) to: Position,
    pub(crate) state: &'static str,
    pub(crate) rebuilding: bool,
}

/// Moves the checkpoint if nobody else moved it; `None` when fenced off.
pub(crate) async fn advance(
    conn: impl PgExecutor<'_>,
    queries: &ProjectionQueries,
    advance: Advance<'_>,
) -> Result<Option<bool>> {
    let (from_transaction, from_sequence) = bind_position(advance.from);
    let (to_transaction, to_sequence) = bind_position(advance.to);
    log_statement("projection_advance");
    sqlx::query_scalar::<_, bool>(AssertSqlSafe(Arc::clone(&queries.advance)))
        .bind(advance.name)
        .bind(version_param(advance.version))
        .bind(from_transaction)
        .bind(from_sequence)
        .bind(to_transaction)
        .bind(to_sequence)
        .bind(advance.state)
        .bind(advance.rebuilding)
        .bind(&queries.channel)
        .fetch_optional(conn)
        .await
        .map_err(|e| PgProjectionError::database("projection_advance", e))
}

/// Makes `version` the served version of `name`, in place of an older one.
pub(crate) async fn switch(
    conn: &mut PgConnection,
    queries: &ProjectionQueries,
    name: &str,
    version: u32,
) -> Result<()> {
    log_statement("projection_deactivate");
    sqlx::query(AssertSqlSafe(Arc::clone(&queries.deactivate)))
        .bind(name)
        .bind(version_param(version))
        .execute(&mut *conn)
        .await
        .map_err(|e| PgProjectionError::database("projection_deactivate", e))?;
    log_statement("projection_activate");
    sqlx::query(AssertSqlSafe(Arc::clone(&queries.activate)))
        .bind(name)
        .bind(version_param(version))
        .execute(&mut *conn)
        .await
        .map_err(|e| PgProjectionError::database("projection_activate", e))?;
    Ok(())
}

/// Moves the checkpoint back to the start for a requested rebuild; `false` when no
/// rebuild was requested any more.
pub(crate) async fn reset(
    conn: &mut PgConnection,
    queries: &ProjectionQueries,
    name: &str,
    version: u32,
) -> Result<bool> {
    log_statement("projection_reset");
    sqlx::query_scalar::<_, bool>(AssertSqlSafe(Arc::clone(&queries.reset)))
        .bind(name)
        .bind(version_param(version))
        .bind(&queries.channel)
        .fetch_optional(&mut *conn)
        .await
        .map(|row| row.is_some())
        .map_err(|e| PgProjectionError::database("projection_reset", e))
}

/// Records that the projection stopped at `failing`; `false` when fenced off.
pub(crate) async fn fail(
    executor: impl PgExecutor<'_>,
    queries: &ProjectionQueries,
    name: &str,
    version: u32,
    at: Position,
    failing: Position,
    error: &str,
) -> Result<bool> {
    let (at_transaction, at_sequence) = bind_position(at);
    let (failing_transaction, failing_sequence) = bind_position(failing);
    log_statement("projection_fail");
    sqlx::query_scalar::<_, String>(AssertSqlSafe(Arc::clone(&queries.fail)))
        .bind(name)
        .bind(version_param(version))
        .bind(at_transaction)
        .bind(at_sequence)
        .bind(failing_transaction)
        .bind(failing_sequence)
        .bind(error)
        .bind(&queries.channel)
        .fetch_optional(executor)
        .await
        .map(|row| row.is_some())
        .map_err(|e| PgProjectionError::database("projection_fail", e))
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

/// Applies an operator's request; returns the position afterwards, or `None` when there
/// was nothing to do.
pub(crate) async fn control(
    executor: impl PgExecutor<'_>,
    queries: &ProjectionQueries,
    name: &str,
    version: u32,
    request: Control,
) -> Result<Option<Position>> {
    log_statement("projection_control");
    let row = sqlx::query_as::<_, (i64, i64)>(AssertSqlSafe(Arc::clone(&queries.control)))
        .bind(name)
        .bind(version_param(version))
        .bind(request.as_str())
        .bind(&queries.channel)
        .fetch_optional(executor)
        .await
        .map_err(|e| PgProjectionError::database("projection_control", e))?;
    row.map(|(transaction_id, sequence)| Ok(position(transaction_id, sequence)?))
        .transpose()
}

/// The checkpoint of the served version of `name` and whether it runs inline, if the
/// name is known.
pub(crate) async fn served_checkpoint(
    executor: impl PgExecutor<'_>,
    queries: &ProjectionQueries,
    name: &str,
) -> Result<Option<(Position, bool)>> {
    log_statement("projection_checkpoint");
    let row = sqlx::query_as::<_, (i64, i64, bool)>(AssertSqlSafe(Arc::clone(&queries.checkpoint)))
        .bind(name)
        .fetch_optional(executor)
        .await
        .map_err(|e| PgProjectionError::database("projection_checkpoint", e))?;
    row.map(|(transaction_id, sequence, inline)| Ok((position(transaction_id, sequence)?, inline)))
        .transpose()
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

/// The status rows of every projection, or of those named `name`.
pub(crate) async fn status(
    executor: impl PgExecutor<'_>,
    queries: &ProjectionQueries,
    name: Option<&str>,
) -> Result<Vec<StatusRow>> {
    log_statement("projection_status");
    sqlx::query_as::<_, StatusRow>(AssertSqlSafe(Arc::clone(&queries.status)))
        .bind(name)
        .fetch_all(executor)
        .await
        .map_err(|e| PgProjectionError::database("projection_status", e))
}

/// Deletes the row of a version that is not served; `false` when there was none.
pub(crate) async fn retire(
    executor: impl PgExecutor<'_>,
    queries: &ProjectionQueries,
    name: &str,
    version: u32,
) -> Result<bool> {
    log_statement("projection_retire");
    sqlx::query_scalar::<_, String>(AssertSqlSafe(Arc::clone(&queries.retire)))
        .bind(name)
        .bind(version_param(version))
        .fetch_optional(executor)
        .await
        .map(|row| row.is_some())
        .map_err(|e| PgProjectionError::database("projection_retire", e))
}
