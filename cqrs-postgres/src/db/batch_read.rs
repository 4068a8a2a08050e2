//! The read at the start of a projection's batch: its row, the head and a window of
//! the log, in one statement and one snapshot.

use chrono::{DateTime, Utc};
use cqrs_core::{EventEnvelope, EventFilter, Position};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::checkpoints::{Projections, filter_params, position_params, version_param};
use super::error::{Error, Result};
use super::rows::{EventRow, position};
use super::statements::Statement;

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
    fn into_header(self) -> Result<Header> {
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
            return Err(Error::UnexpectedRow {
                statement: Statement::ProjectionBatch.name(),
                problem: "an event of the window came without its content".to_owned(),
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
impl Projections {
    /// Reads the projection's row, the head and a window of the log, keeping the events
    /// `filter` wants, in one snapshot.
    ///
    /// An event row that does not convert into an envelope (metadata of the wrong shape)
    /// is an error against that event, which the worker handles like a failing handler.
    pub(crate) async fn read_batch(
        &self,
        conn: &mut PgConnection,
        name: &str,
        version: u32,
        filter: &EventFilter,
        window: Window,
    ) -> Result<Batch> {
        let (stream_types, event_types) = filter_params(filter);
        let (transaction_id, sequence) = position_params(window.after);
        let rows: Vec<BatchRow> = self
            .statements()
            .get(Statement::ProjectionBatch)
            .bind(name)
            .bind(version_param(version))
            .bind(transaction_id)
            .bind(sequence)
            .bind(&stream_types)
            .bind(&event_types)
            .bind(i64::try_from(window.limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await?;
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
}
