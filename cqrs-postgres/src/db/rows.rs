//! Rows as the store's statements return them, and their conversion into cqrs-core types.

#![allow(
    clippy::result_large_err,
    reason = "the conversions feed `EventStore` methods, whose error type is cqrs_core::Error"
)]

use chrono::{DateTime, Utc};
use cqrs_core::store::{AppendOutcome, RecordedEvent, Snapshot};
use cqrs_core::{CodecError, EventEnvelope, Metadata, Position};
use serde_json::Value;
use sqlx::Row as _;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::error::Error;

/// Converts a stored `bigint` that must not be negative.
pub(crate) fn to_u64(column: &'static str, value: i64) -> Result<u64, Error> {
    u64::try_from(value).map_err(|_| Error::OutOfRange { column, value })
}

/// Converts a stored `integer` that must not be negative.
pub(crate) fn to_u32(column: &'static str, value: i32) -> Result<u32, Error> {
    u32::try_from(value).map_err(|_| Error::OutOfRange {
        column,
        value: i64::from(value),
    })
}

/// Converts a value the caller gave into a `bigint` bind parameter. Values past
/// `i64::MAX` never occur in the store, so they clamp to it (an exact stand-in for
/// "after everything").
pub(crate) fn to_i64_saturating(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn position(transaction_id: i64, sequence: i64) -> Result<Position, Error> {
    Ok(Position::new(
        to_u64("transaction_id", transaction_id)?,
        to_u64("sequence", sequence)?,
    ))
}

/// Parses the text of a stored `metadata` column. Most events carry the pipeline's ids;
/// events appended without metadata store `{}`, which needs no parser.
fn parse_metadata(text: &str) -> Result<Metadata, serde_json::Error> {
    if text == "{}" {
        Ok(Metadata::default())
    } else {
        serde_json::from_str(text)
    }
}

/// One event of a known stream (the stream's type and id are not repeated per row).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    pub(crate) sequence: i64,
    pub(crate) transaction_id: i64,
    pub(crate) stream_version: i64,
    pub(crate) event_id: Uuid,
    pub(crate) event_type: String,
    pub(crate) schema_version: i32,
    pub(crate) payload: Value,
    /// The `metadata` column as text: parsed straight into [`Metadata`].
    pub(crate) metadata: String,
    pub(crate) recorded_at: DateTime<Utc>,
}

/// One event of the global log.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LogRow {
    pub(crate) stream_type: String,
    pub(crate) stream_id: String,
    #[sqlx(flatten)]
    pub(crate) event: EventRow,
}

impl LogRow {
    pub(crate) fn into_recorded(self) -> cqrs_core::Result<RecordedEvent> {
        self.event.into_recorded(self.stream_type, self.stream_id)
    }
}

impl EventRow {
    /// Builds the envelope. Columns the store constrains but a hand-written row could
    /// still break (metadata that is not the metadata shape) are a typed
    /// [`cqrs_core::Error::Decode`] naming the stream, version and type.
    pub(crate) fn into_recorded(
        mut self,
        stream_type: String,
        stream_id: String,
    ) -> cqrs_core::Result<RecordedEvent> {
        let payload = std::mem::take(&mut self.payload);
        self.into_envelope(stream_type, stream_id, payload)
    }

    /// Builds the envelope around `payload` (the row's own `payload` is not used), with
    /// the errors of [`into_recorded`](Self::into_recorded).
    pub(crate) fn into_envelope<P>(
        self,
        stream_type: String,
        stream_id: String,
        payload: P,
    ) -> cqrs_core::Result<EventEnvelope<P>> {
        let stream_version = to_u64("stream_version", self.stream_version)?;
        let schema_version = to_u32("schema_version", self.schema_version)?;
        let position = position(self.transaction_id, self.sequence)?;
        let metadata = match parse_metadata(&self.metadata) {
            Ok(metadata) => metadata,
            Err(source) => {
                // Named with its position, so a reader of the log can step over it.
                return Err(cqrs_core::Error::Decode {
                    source: Box::new(CodecError::Payload {
                        event_type: self.event_type.clone(),
                        version: schema_version,
                        source,
                    }),
                    stream_type,
                    stream_id,
                    stream_version,
                    event_type: self.event_type,
                    schema_version,
                    position: Some(position),
                });
            }
        };
        Ok(EventEnvelope {
            event_id: self.event_id,
            stream_type,
            stream_id,
            stream_version,
            position,
            event_type: self.event_type,
            schema_version,
            metadata,
            recorded_at: self.recorded_at,
            payload,
        })
    }
}

/// A row of `load_for_command.sql`: the snapshot (no event type) or an event.
///
/// A replay decodes thousands of these, so the row is read by column position and
/// without sqlx's per-value type check: the statement casts every column to the type read
/// here (`bigint`, `text`, `integer`, `text`, `jsonb`), and the decoders still validate the bytes
/// (a mismatch is an error, never a panic). Together these took about a fifth off a
/// 10,000-event replay.
#[derive(Debug)]
pub(crate) struct ReplayRow {
    pub(crate) stream_version: i64,
    /// `None` on the snapshot's row.
    pub(crate) event_type: Option<String>,
    pub(crate) schema_version: Option<i32>,
    /// The event's payload as JSON text; `None` on the snapshot's row.
    pub(crate) payload: Option<String>,
    /// The snapshot's state; `None` on event rows.
    pub(crate) state: Option<Value>,
}

impl<'r> sqlx::FromRow<'r, PgRow> for ReplayRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            stream_version: row.try_get_unchecked(0)?,
            event_type: row.try_get_unchecked(1)?,
            schema_version: row.try_get_unchecked(2)?,
            payload: row.try_get_unchecked(3)?,
            state: row.try_get_unchecked(4)?,
        })
    }
}

/// A row of `append.sql` or `find_command.sql`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OutcomeRow {
    #[sqlx(default)]
    pub(crate) duplicate: bool,
    pub(crate) first_version: i64,
    pub(crate) stream_version: i64,
    pub(crate) transaction_id: i64,
    pub(crate) sequence: i64,
    /// When the appended events were recorded (only on a fresh append's row).
    #[sqlx(default)]
    pub(crate) recorded_at: Option<DateTime<Utc>>,
    /// The stream a command id was recorded for (only on a duplicate's row).
    #[sqlx(default)]
    pub(crate) holder_type: Option<String>,
    #[sqlx(default)]
    pub(crate) holder_id: Option<String>,
}

/// The refusal of a command id recorded for another stream than `stream_type/stream_id`,
/// if the holder columns name another.
pub(crate) fn held_elsewhere(
    command_id: Option<uuid::Uuid>,
    holder_type: Option<&str>,
    holder_id: Option<&str>,
    stream_type: &str,
    stream_id: &str,
) -> Option<cqrs_core::Error> {
    match (command_id, holder_type, holder_id) {
        (Some(command_id), Some(holder_type), Some(holder_id))
            if (holder_type, holder_id) != (stream_type, stream_id) =>
        {
            Some(cqrs_core::Error::CommandIdInUse {
                command_id,
                stream_type: holder_type.to_owned(),
                stream_id: holder_id.to_owned(),
            })
        }
        _ => None,
    }
}

impl OutcomeRow {
    pub(crate) fn into_outcome(self) -> Result<AppendOutcome, Error> {
        Ok(AppendOutcome {
            first_version: to_u64("first_version", self.first_version)?,
            stream_version: to_u64("stream_version", self.stream_version)?,
            position: position(self.transaction_id, self.sequence)?,
            duplicate: self.duplicate,
        })
    }
}

/// A row of `load_snapshot.sql`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SnapshotRow {
    pub(crate) stream_version: i64,
    pub(crate) state_version: i32,
    pub(crate) state: Value,
}

impl SnapshotRow {
    pub(crate) fn into_snapshot(
        self,
        stream_type: &str,
        stream_id: &str,
    ) -> Result<Snapshot, Error> {
        Ok(Snapshot {
            stream_type: stream_type.to_owned(),
            stream_id: stream_id.to_owned(),
            stream_version: to_u64("stream_version", self.stream_version)?,
            state_version: to_u32("state_version", self.state_version)?,
            state: self.state,
        })
    }
}

/// The head position.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PositionRow {
    pub(crate) transaction_id: i64,
    pub(crate) sequence: i64,
}
