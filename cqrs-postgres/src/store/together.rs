//! Sending the appends that waited at the same time as one statement
//! (`append_batch.sql`), and handing each its outcome.

use cqrs_core::store::AppendOutcome;
use sqlx::FromRow;
use sqlx::types::Json;
use tracing::warn;
use uuid::Uuid;

use super::Inner;
use super::batch::{Entry, Reply};
use super::connections::Check;
use crate::db::{Statement, connection_lost, held_elsewhere, position, to_u64};

/// A row of `append_batch.sql` or `append_batch_plain.sql`: one append written, or found
/// by its command id.
#[derive(FromRow)]
struct BatchRow {
    stream_type: String,
    stream_id: String,
    duplicate: bool,
    first_version: i64,
    stream_version: i64,
    transaction_id: i64,
    sequence: i64,
    /// The stream a command id was recorded for (only on a duplicate's row).
    #[sqlx(default)]
    holder_type: Option<String>,
    #[sqlx(default)]
    holder_id: Option<String>,
}

impl BatchRow {
    fn into_outcome(self) -> cqrs_core::Result<AppendOutcome> {
        Ok(AppendOutcome {
            first_version: to_u64("first_version", self.first_version)?,
            stream_version: to_u64("stream_version", self.stream_version)?,
            position: position(self.transaction_id, self.sequence)?,
            duplicate: self.duplicate,
        })
    }
}

/// Sends `batch` (two appends or more) as one statement and replies to each append:
/// its outcome, or to be sent alone when the statement failed.
pub(super) async fn send(inner: &Inner, batch: Vec<Entry>) {
    let events: usize = batch.iter().map(|e| e.append().request.events.len()).sum();
    let mut stream_types = Vec::with_capacity(batch.len());
    let mut stream_ids = Vec::with_capacity(batch.len());
    let mut expected = Vec::with_capacity(batch.len());
    let mut command_ids = Vec::with_capacity(batch.len());
    let mut appends = Vec::with_capacity(events);
    let mut places = Vec::with_capacity(events);
    let mut event_ids: Vec<Uuid> = Vec::with_capacity(events);
    let mut event_types = Vec::with_capacity(events);
    let mut schema_versions = Vec::with_capacity(events);
    let mut payloads = Vec::with_capacity(events);
    let mut metadata = Vec::with_capacity(events);
    for (index, entry) in (1_i32..).zip(&batch) {
        let append = entry.append();
        stream_types.push(append.request.stream_type.as_ref());
        stream_ids.push(append.request.stream_id.as_str());
        expected.push(append.expected);
        command_ids.push(append.request.command_id);
        for ((place, event), schema_version) in (1_i32..)
            .zip(&append.request.events)
            .zip(&append.schema_versions)
        {
            appends.push(index);
            places.push(place);
            event_ids.push(event.event_id);
            event_types.push(event.event_type.as_ref());
            schema_versions.push(*schema_version);
            payloads.push(Json(&event.payload));
            metadata.push(Json(&event.metadata));
        }
    }
    let statement = if command_ids.iter().all(Option::is_none) {
        Statement::AppendBatchPlain
    } else {
        Statement::AppendBatch
    };
    let query = inner
        .statements
        .get(statement)
        .bind(&stream_types)
        .bind(&stream_ids)
        .bind(&expected)
        .bind(&command_ids)
        .bind(&appends)
        .bind(&places)
        .bind(&event_ids)
        .bind(&event_types)
        .bind(&schema_versions)
        .bind(&payloads)
        .bind(&metadata);
    let rows: sqlx::Result<Vec<BatchRow>> =
        match inner.commands.lease(&inner.pool, Check::IfIdle).await {
            Ok(mut lease) => {
                let rows = match lease.conn() {
                    Ok(conn) => query.try_fetch_all(conn).await,
                    Err(error) => Err(error),
                };
                lease.release(&rows);
                rows
            }
            Err(error) => Err(error),
        };
    let mut rows = match rows {
        Ok(rows) => rows,
        Err(error) => {
            let unknown = connection_lost(&error);
            if unknown {
                warn!(%error, "a batch of appends lost its connection; sending each again");
                inner.commands.check_idle_before_use();
            }
            for entry in batch {
                entry.reply(Reply::Alone { unknown });
            }
            return;
        }
    };
    // One row per append written or found by its command id, named by its stream (no
    // stream is in a statement twice).
    for entry in batch {
        let append = entry.append();
        let found = rows.iter().position(|row| {
            row.stream_id == append.request.stream_id
                && row.stream_type == append.request.stream_type
        });
        let outcome = match found {
            Some(found) => {
                let row = rows.swap_remove(found);
                match held_elsewhere(
                    append.request.command_id,
                    row.holder_type.as_deref(),
                    row.holder_id.as_deref(),
                    &append.request.stream_type,
                    &append.request.stream_id,
                ) {
                    Some(refusal) => Err(refusal),
                    None => row.into_outcome(),
                }
            }
            None => Err(append.conflict()),
        };
        entry.reply(Reply::Done(outcome));
    }
}
