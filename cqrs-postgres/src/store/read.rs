//! [`EventStore`] for [`PgEventStore`]: the reads of streams, the log and snapshots, and
//! the entry to the write path (`append.rs`).

use async_trait::async_trait;
use cqrs_core::store::{
    AppendOutcome, AppendRequest, AtomicAppendOutcome, AtomicAppendRequest, LoadedStream,
    RecordedEvent, ReplayEvent, Snapshot,
};
use cqrs_core::{EventFilter, EventStore, Position};
use sqlx::types::Json;
use tracing::warn;
use uuid::Uuid;

use super::connections::Check;
use super::{PgEventStore, append, atomic};
use crate::db::{
    Error, EventRow, LogRow, PositionRow, ReplayRow, SnapshotRow, Statement, position,
    to_i64_saturating, to_u32, to_u64,
};

#[async_trait]
impl EventStore for PgEventStore {
    #[tracing::instrument(
        level = "debug",
        name = "cqrs_postgres.load",
        skip_all,
        fields(aggregate_type = %stream_type, aggregate_id = %stream_id, after_version),
        err
    )]
    async fn load(
        &self,
        stream_type: &str,
        stream_id: &str,
        after_version: u64,
    ) -> cqrs_core::Result<Vec<RecordedEvent>> {
        let inner = &self.inner;
        let rows: Vec<EventRow> = inner
            .read(Statement::Load, |sql| {
                sql.bind(stream_type)
                    .bind(stream_id)
                    .bind(to_i64_saturating(after_version))
            })
            .await?;
        rows.into_iter()
            .map(|row| row.into_recorded(stream_type.to_owned(), stream_id.to_owned()))
            .collect()
    }

    #[tracing::instrument(
        level = "debug",
        name = "cqrs_postgres.load_for_command",
        skip_all,
        fields(aggregate_type = %stream_type, aggregate_id = %stream_id, state_version),
        err
    )]
    async fn load_for_command(
        &self,
        stream_type: &str,
        stream_id: &str,
        state_version: u32,
    ) -> cqrs_core::Result<LoadedStream> {
        let inner = &self.inner;
        // A state version past i32::MAX cannot be stored, so no snapshot matches it.
        let wanted = i32::try_from(state_version).unwrap_or(-1);
        let rows: Vec<ReplayRow> = inner
            .commands
            .read(&inner.pool, Check::IfIdle, || {
                inner
                    .statements
                    .get(Statement::LoadForCommand)
                    .bind(stream_type)
                    .bind(stream_id)
                    .bind(wanted)
            })
            .await
            .map_err(|e| Error::database(Statement::LoadForCommand.name(), e))?;
        let mut loaded = LoadedStream::default();
        loaded.events.reserve(rows.len());
        for row in rows {
            let stream_version = to_u64("stream_version", row.stream_version)?;
            match (row.event_type, row.schema_version, row.payload, row.state) {
                (Some(event_type), Some(schema_version), Some(payload), _) => {
                    loaded.events.push(ReplayEvent {
                        stream_version,
                        event_type,
                        schema_version: to_u32("schema_version", schema_version)?,
                        payload,
                    });
                }
                // A snapshot the stream does not reach: ignored, and the events after
                // it are all of the stream's.
                (None, _, _, None) => {
                    warn!(
                        aggregate_type = stream_type,
                        aggregate_id = stream_id,
                        stream_version,
                        "the stored snapshot is ahead of its stream; ignored"
                    );
                }
                // The snapshot's row: the only one without an event type.
                (None, _, _, Some(state)) => {
                    loaded.snapshot = Some(Snapshot {
                        stream_type: stream_type.to_owned(),
                        stream_id: stream_id.to_owned(),
                        stream_version,
                        state_version,
                        state,
                    });
                }
                _ => {
                    return Err(Error::UnexpectedRow {
                        statement: Statement::LoadForCommand.name(),
                        problem: format!(
                            "version {stream_version} came back as neither an event nor a \
                             snapshot"
                        ),
                    }
                    .into());
                }
            }
        }
        // The rows arrive in version order; a stable sort of sorted input is one pass.
        loaded.events.sort_by_key(|event| event.stream_version);
        Ok(loaded)
    }

    #[tracing::instrument(
        level = "debug",
        name = "cqrs_postgres.append",
        skip_all,
        fields(
            aggregate_type = %request.stream_type,
            aggregate_id = %request.stream_id,
            expected_version = request.expected_version,
            events = request.events.len(),
        ),
        err
    )]
    async fn append(&self, request: AppendRequest) -> cqrs_core::Result<AppendOutcome> {
        append::append(&self.inner, request).await
    }

    #[tracing::instrument(
        level = "debug",
        name = "cqrs_postgres.append_atomic",
        skip_all,
        fields(streams = request.appends.len()),
        err
    )]
    async fn append_atomic(
        &self,
        request: AtomicAppendRequest,
    ) -> cqrs_core::Result<AtomicAppendOutcome> {
        atomic::append_atomic(&self.inner, request).await
    }

    #[tracing::instrument(
        level = "debug",
        name = "cqrs_postgres.find_command",
        skip_all,
        fields(command_id = %command_id),
        err
    )]
    async fn find_command(
        &self,
        command_id: Uuid,
        stream_type: &str,
        stream_id: &str,
    ) -> cqrs_core::Result<Option<AppendOutcome>> {
        append::find_command(&self.inner, command_id, stream_type, stream_id).await
    }

    #[tracing::instrument(
        level = "debug",
        name = "cqrs_postgres.read_all",
        skip_all,
        fields(position = %after, limit),
        err
    )]
    async fn read_all(
        &self,
        after: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> cqrs_core::Result<Vec<RecordedEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stream_types: Vec<&str> = filter.stream_types.iter().map(AsRef::as_ref).collect();
        let event_types: Vec<&str> = filter.event_types.iter().map(AsRef::as_ref).collect();
        let inner = &self.inner;
        let rows: Vec<LogRow> = inner
            .read(Statement::ReadAll, |sql| {
                sql.bind(to_i64_saturating(after.commit()))
                    .bind(to_i64_saturating(after.sequence()))
                    .bind(&stream_types)
                    .bind(&event_types)
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            })
            .await?;
        rows.into_iter().map(LogRow::into_recorded).collect()
    }

    #[tracing::instrument(level = "debug", name = "cqrs_postgres.head", skip_all, err)]
    async fn head(&self) -> cqrs_core::Result<Position> {
        let inner = &self.inner;
        let row: Option<PositionRow> = inner.read(Statement::Head, |sql| sql).await?.pop();
        match row {
            None => Ok(Position::START),
            Some(row) => Ok(position(row.transaction_id, row.sequence)?),
        }
    }

    #[tracing::instrument(
        level = "debug",
        name = "cqrs_postgres.load_snapshot",
        skip_all,
        fields(aggregate_type = %stream_type, aggregate_id = %stream_id),
        err
    )]
    async fn load_snapshot(
        &self,
        stream_type: &str,
        stream_id: &str,
    ) -> cqrs_core::Result<Option<Snapshot>> {
        let inner = &self.inner;
        let row: Option<SnapshotRow> = inner
            .read(Statement::LoadSnapshot, |sql| {
                sql.bind(stream_type).bind(stream_id)
            })
            .await?
            .pop();
        match row {
            None => Ok(None),
            Some(row) => Ok(Some(row.into_snapshot(stream_type, stream_id)?)),
        }
    }

    #[tracing::instrument(
        level = "debug",
        name = "cqrs_postgres.save_snapshot",
        skip_all,
        fields(
            aggregate_type = %snapshot.stream_type,
            aggregate_id = %snapshot.stream_id,
            stream_version = snapshot.stream_version,
        ),
        err
    )]
    async fn save_snapshot(&self, snapshot: Snapshot) -> cqrs_core::Result<()> {
        let invalid = |reason| cqrs_core::Error::InvalidSnapshot {
            stream_type: snapshot.stream_type.clone(),
            stream_id: snapshot.stream_id.clone(),
            reason,
        };
        let stream_version = i64::try_from(snapshot.stream_version)
            .map_err(|_| invalid("its stream version does not fit a bigint"))?;
        let state_version = i32::try_from(snapshot.state_version)
            .map_err(|_| invalid("its state version does not fit an integer"))?;
        let inner = &self.inner;
        // Sending it again is safe: a snapshot never replaces a newer one.
        let reached: Option<(bool,)> = inner
            .read(Statement::SaveSnapshot, |sql| {
                sql.bind(&snapshot.stream_type)
                    .bind(&snapshot.stream_id)
                    .bind(stream_version)
                    .bind(state_version)
                    .bind(Json(&snapshot.state))
            })
            .await?
            .pop();
        if !reached.is_some_and(|(reached,)| reached) {
            return Err(invalid("the stream has no event at its version"));
        }
        Ok(())
    }
}
