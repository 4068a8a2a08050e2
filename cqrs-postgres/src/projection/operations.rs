//! What an operator asks of a store without running its projections:
//! [`PgOperations`].

use chrono::{DateTime, Utc};
use cqrs_core::Position;
use cqrs_core::store::RecordedEvent;
use sqlx::PgPool;
use tracing::{Instrument, info};

use super::status::PgProjectionStatus;
use crate::db::{Control, Error, Projections, Result, Sql};
use crate::store::PgEventStore;

/// An operator's handle on a store: its streams, the events in them, and the status of
/// and requests to its projections (retry, skip, rebuild, retire), from any process,
/// whether or not it runs the projections. Requests are recorded in the projections'
/// table and announced; the runner that owns the projection carries them out. Made by
/// [`PgEventStore::operations`].
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = cqrs_postgres::PgEventStore::connect("postgres://postgres@localhost/app").await?;
/// let ops = store.operations();
/// for projection in ops.projections().await? {
///     if let Some(error) = &projection.error {
///         println!("{} v{} failed at {:?}: {error}", projection.name, projection.version, projection.failed_at);
///         ops.retry(&projection.name, projection.version).await?;
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgOperations {
    store: PgEventStore,
    pool: PgPool,
    projections: Projections,
}

/// One stream, as [`PgOperations::streams`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct PgStreamSummary {
    /// The stream's type (the aggregate's).
    pub stream_type: String,
    /// The stream's id.
    pub stream_id: String,
    /// Its version: how many events it holds.
    pub version: u64,
    /// When its first event was recorded.
    pub created_at: DateTime<Utc>,
    /// When its last event was recorded.
    pub updated_at: DateTime<Utc>,
}

/// How many stored events have one type name at one schema version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct PgEventCount {
    /// The stored type name.
    pub event_type: String,
    /// The stored schema version.
    pub schema_version: u32,
    /// How many.
    pub count: u64,
}

/// A row of [`PgOperations::streams`]: type, id, version, first and last recording.
type StreamRow = (String, String, i64, DateTime<Utc>, DateTime<Utc>);

impl PgEventStore {
    /// An operator's handle on this store (see [`PgOperations`]).
    #[must_use]
    pub fn operations(&self) -> PgOperations {
        PgOperations::new(self.clone())
    }
}

impl PgOperations {
    pub(crate) fn new(store: PgEventStore) -> Self {
        Self {
            pool: store.pool().clone(),
            projections: store.projections(),
            store,
        }
    }

    /// The store it works on.
    #[must_use]
    pub fn store(&self) -> &PgEventStore {
        &self.store
    }

    /// Streams in `(type, id)` order: of type `stream_type` when given, after the
    /// stream `after` (the last one of the previous page) when given, at most `limit`.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the query fails.
    pub async fn streams(
        &self,
        stream_type: Option<&str>,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<PgStreamSummary>> {
        let (after_type, after_id) = after.unzip();
        let mut tx = self.store.begin_in_schema().await?;
        let rows: Vec<StreamRow> = Sql::new(
            "ops_streams",
            "SELECT stream_type, stream_id, max(stream_version), min(recorded_at), \
                    max(recorded_at) \
             FROM events \
             WHERE ($1::text IS NULL OR stream_type = $1) \
               AND ($2::text IS NULL OR (stream_type, stream_id) > ($2::text, $3::text)) \
             GROUP BY stream_type, stream_id \
             ORDER BY stream_type, stream_id \
             LIMIT $4",
        )
        .bind(stream_type)
        .bind(after_type)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        drop(tx);
        rows.into_iter()
            .map(
                |(stream_type, stream_id, version, created_at, updated_at)| {
                    Ok(PgStreamSummary {
                        stream_type,
                        stream_id,
                        version: u64::try_from(version).map_err(|_| Error::OutOfRange {
                            column: "stream_version",
                            value: version,
                        })?,
                        created_at,
                        updated_at,
                    })
                },
            )
            .collect()
    }

    /// The event stored at `position`, if any.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the query fails.
    pub async fn event_at(&self, position: Position) -> Result<Option<RecordedEvent>> {
        use cqrs_core::EventStore as _;
        // The log is ordered by (commit, sequence): read one event from just before it.
        let Some(sequence) = position.sequence().checked_sub(1) else {
            return Ok(None);
        };
        let before = Position::new(position.commit(), sequence);
        let events = self
            .store
            .read_all(before, 1, &cqrs_core::EventFilter::all())
            .await
            .map_err(|source| Error::Read(Box::new(source)))?;
        Ok(events.into_iter().find(|e| e.position == position))
    }

    /// How many events the store holds per type name and schema version.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the query fails.
    pub async fn event_counts(&self) -> Result<Vec<PgEventCount>> {
        let mut tx = self.store.begin_in_schema().await?;
        let rows: Vec<(String, i32, i64)> = Sql::new(
            "ops_event_counts",
            "SELECT event_type, schema_version, count(*) FROM events \
             GROUP BY event_type, schema_version ORDER BY event_type, schema_version",
        )
        .fetch_all(&mut *tx)
        .await?;
        drop(tx);
        rows.into_iter()
            .map(|(event_type, schema_version, count)| {
                Ok(PgEventCount {
                    event_type,
                    schema_version: u32::try_from(schema_version).map_err(|_| {
                        Error::OutOfRange {
                            column: "schema_version",
                            value: i64::from(schema_version),
                        }
                    })?,
                    count: u64::try_from(count).unwrap_or(0),
                })
            })
            .collect()
    }

    /// The status of every projection version (those run by any process), ordered by
    /// name and version.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the query fails.
    pub async fn projections(&self) -> Result<Vec<PgProjectionStatus>> {
        self.status(None).await
    }

    /// The status of each version of projection `name`.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the query fails.
    pub async fn projection(&self, name: &str) -> Result<Vec<PgProjectionStatus>> {
        self.status(Some(name)).await
    }

    async fn status(&self, name: Option<&str>) -> Result<Vec<PgProjectionStatus>> {
        let rows = self.projections.status(&self.pool, name).await?;
        rows.into_iter().map(PgProjectionStatus::from_row).collect()
    }

    /// Asks for a rebuild of version `version` of projection `name`: its owner empties
    /// the view and replays the log. Returns `false` when there is no such version.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the update fails.
    pub async fn rebuild(&self, name: &str, version: u32) -> Result<bool> {
        self.control(name, version, Control::Rebuild)
            .await
            .map(|position| position.is_some())
    }

    /// Resumes a failed projection version at the event it failed on, with a fresh set
    /// of attempts. Returns `false` when it had not failed.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the update fails.
    pub async fn retry(&self, name: &str, version: u32) -> Result<bool> {
        self.control(name, version, Control::Retry)
            .await
            .map(|position| position.is_some())
    }

    /// Resumes a failed projection version after the event it failed on, which it will
    /// never apply. Returns the skipped event's position, or `None` when it had not
    /// failed.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the update fails.
    pub async fn skip(&self, name: &str, version: u32) -> Result<Option<Position>> {
        self.control(name, version, Control::Skip).await
    }

    /// Forgets a version that is not served (after a blue/green switch): its row goes.
    /// Returns `false` when there is no such version, or it is the served one.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the delete fails.
    pub async fn retire(&self, name: &str, version: u32) -> Result<bool> {
        self.projections.retire(&self.pool, name, version).await
    }

    async fn control(
        &self,
        name: &str,
        version: u32,
        request: Control,
    ) -> Result<Option<Position>> {
        let span = tracing::info_span!(
            "cqrs_postgres.projection.control",
            projection = %name,
            version,
            request = ?request
        );
        let position = self
            .projections
            .control(&self.pool, name, version, request)
            .instrument(span)
            .await?;
        if let Some(position) = position {
            info!(projection = %name, version, request = ?request, %position, "operator request");
        }
        Ok(position)
    }
}
