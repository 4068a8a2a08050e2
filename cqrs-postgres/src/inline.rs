//! Inline projections: views updated inside the transaction of the append itself.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use cqrs_core::{AppendRequest, EventFilter, NewEvent, Position, Projection, RecordedEvent};
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, Postgres};
use tracing::trace;

use crate::PgEventStore;
use crate::checkpoints::{self, ProjectionQueries};
use crate::connections::Lease;
use crate::projection_error::PgProjectionError;
use crate::rows::{OutcomeRow, position, to_u64};
use crate::schema::SchemaName;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One inline projection, its type erased.
trait InlineHandler: Send + Sync {
    fn name(&self) -> &'static str;
    fn version(&self) -> u32;
    fn filter(&self) -> &EventFilter;
    /// Applies the events of one append (those its filter keeps).
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, cqrs_core::Result<()>>;
}

struct Handler<P> {
    projection: P,
    filter: EventFilter,
}

impl<P> InlineHandler for Handler<P>
where
    P: Projection<Context = PgConnection> + Clone + Sync,
{
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn version(&self) -> u32 {
        P::VERSION
    }

    fn filter(&self) -> &EventFilter {
        &self.filter
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, cqrs_core::Result<()>> {
        Box::pin(async move {
            // Each append gets its own copy, so concurrent appends never wait on it.
            let mut projection = self.projection.clone();
            for event in events
                .iter()
                .filter(|e| self.filter.matches(&e.stream_type, &e.event_type))
            {
                let decoded = event.decode::<P::Event>()?;
                projection
                    .handle(&mut *conn, &decoded)
                    .await
                    .map_err(|source| cqrs_core::Error::Projection {
                        projection: P::NAME,
                        position: event.position,
                        source: Box::new(source),
                    })?;
            }
            Ok(())
        })
    }
}

/// The inline projections of a store (none by default).
#[derive(Clone, Default)]
pub(crate) struct Inline {
    handlers: Vec<Arc<dyn InlineHandler>>,
    /// Whether their rows in the projections table were written (once per store value).
    registered: Arc<AtomicBool>,
}

impl fmt::Debug for Inline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.handlers.iter().map(|h| (h.name(), h.version())))
            .finish()
    }
}

impl Inline {
    pub(crate) fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    /// Writes the projections' rows, marked inline, so that status reports them and a
    /// wait on them returns at once.
    async fn register(&self, store: &PgEventStore) -> cqrs_core::Result<()> {
        if self.registered.load(Ordering::Acquire) {
            return Ok(());
        }
        let queries = ProjectionQueries::new(&SchemaName::parse(store.schema())?);
        let mut conn = store
            .pool()
            .acquire()
            .await
            .map_err(|e| PgProjectionError::database("acquire", e))?;
        for handler in &self.handlers {
            checkpoints::register(
                &mut conn,
                &queries,
                handler.name(),
                handler.version(),
                handler.filter(),
                true,
            )
            .await?;
        }
        self.registered.store(true, Ordering::Release);
        Ok(())
    }
}

impl PgEventStore {
    /// The same store, also running `projection` inside the transaction of every append:
    /// its view is updated in the same commit as the events, so it never lags.
    ///
    /// The append becomes a transaction of a few statements instead of one: `BEGIN`, the
    /// append, for an append of several events one to learn where they sit in the log,
    /// the handler's own, and `COMMIT`. The handler gets the transaction and each appended
    /// event its [`filter`](Projection::filter) keeps; it runs on a clone of
    /// `projection`, so concurrent appends do not wait on each other. If it fails, the
    /// append fails with [`cqrs_core::Error::Projection`] and nothing is written: an
    /// inline projection can refuse writes, so keep its handler simple.
    ///
    /// Inline projections are registered in the projections table (on the first append):
    /// [`PgProjectionRunner::status`](crate::PgProjectionRunner::status) reports them as
    /// [`Inline`](crate::ProjectionState::Inline), and
    /// [`wait_for`](crate::PgProjectionRunner::wait_for) returns at once for them. Events
    /// appended before the projection was added are not applied: create its view from
    /// the log first (for instance with a runner, before switching to inline).
    ///
    /// ```no_run
    /// use cqrs_core::{EventEnvelope, Projection};
    /// use cqrs_postgres::PgEventStore;
    /// use sqlx::PgConnection;
    /// # use cqrs_core::{CodecError, Event, EventType, codec};
    /// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    /// # struct Deposited { amount: i64 }
    /// # impl Event for Deposited {
    /// #     const TYPES: &'static [EventType] = &[EventType { name: "Deposited", version: 1 }];
    /// #     fn event_type(&self) -> &'static str { "Deposited" }
    /// #     fn schema_version(&self) -> u32 { 1 }
    /// #     fn encode(&self) -> Result<serde_json::Value, CodecError> { codec::encode(self) }
    /// #     fn decode(t: &str, v: u32, p: serde_json::Value) -> Result<Self, CodecError> {
    /// #         codec::check_known::<Self>(t, v)?;
    /// #         codec::decode(t, v, p)
    /// #     }
    /// # }
    ///
    /// #[derive(Clone)]
    /// struct Balances;
    ///
    /// impl Projection for Balances {
    ///     const NAME: &'static str = "balances";
    ///     type Event = Deposited;
    ///     type Context = PgConnection;
    ///     type Error = sqlx::Error;
    ///
    ///     async fn handle(
    ///         &mut self,
    ///         tx: &mut PgConnection,
    ///         event: &EventEnvelope<Deposited>,
    ///     ) -> Result<(), sqlx::Error> {
    ///         sqlx::query(
    ///             "INSERT INTO balances AS b VALUES ($1, $2) \
    ///              ON CONFLICT (account) DO UPDATE SET balance = b.balance + excluded.balance",
    ///         )
    ///         .bind(&event.stream_id)
    ///         .bind(event.payload.amount)
    ///         .execute(tx)
    ///         .await?;
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = PgEventStore::connect("postgres://postgres@localhost/app")
    ///     .await?
    ///     .with_inline(Balances);
    /// # drop(store);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn with_inline<P>(self, projection: P) -> Self
    where
        P: Projection<Context = PgConnection> + Clone + Sync,
    {
        let mut inline = self.inline_projections().clone();
        inline.handlers.push(Arc::new(Handler {
            projection,
            filter: P::filter(),
        }));
        inline.registered = Arc::new(AtomicBool::new(false));
        self.with_inline_projections(inline)
    }
}

/// Runs the store's append statement and the inline projections in one transaction.
///
/// The inner result is the append statement's, for the store to interpret (a conflict,
/// a unique violation); the outer error is an inline projection's failure or a failed
/// commit, after which nothing is written.
pub(crate) async fn append(
    store: &PgEventStore,
    mut lease: Lease<'_>,
    request: &AppendRequest,
    query: QueryAs<'_, Postgres, OutcomeRow, PgArguments>,
) -> cqrs_core::Result<Result<Option<OutcomeRow>, sqlx::Error>> {
    let inline = store.inline_projections();
    inline.register(store).await?;
    let conn = match lease.conn() {
        Ok(conn) => conn,
        Err(error) => return Ok(Err(error)),
    };
    let mut tx = match conn.begin().await {
        Ok(tx) => tx,
        Err(error) => return Ok(Err(error)),
    };
    let row = match query.fetch_optional(&mut *tx).await {
        Ok(Some(row)) if !row.duplicate => row,
        // A conflict, a duplicate command or an error: nothing was written. Rolling back
        // leaves the connection ready for the next command.
        other => {
            let rolled_back = tx.rollback().await;
            lease.release(&rolled_back);
            return Ok(other);
        }
    };
    // A failing handler drops the transaction, and the lease with it: the connection,
    // whose rollback is still pending, is closed rather than reused.
    let events = appended(&mut tx, store, request, &row).await?;
    for handler in &inline.handlers {
        trace!(projection = handler.name(), "inline projection");
        handler.apply(&mut tx, &events).await?;
    }
    let committed = tx.commit().await;
    lease.release(&committed);
    committed.map_err(|e| PgProjectionError::database("commit", e))?;
    Ok(Ok(Some(row)))
}

/// The events the append wrote, as the log holds them.
async fn appended(
    conn: &mut PgConnection,
    store: &PgEventStore,
    request: &AppendRequest,
    row: &OutcomeRow,
) -> cqrs_core::Result<Vec<RecordedEvent>> {
    // A single event sits where the append's outcome says: no need to ask. (Several
    // events of one append need not have consecutive sequences, so they are looked up.)
    if let ([event], Some(recorded_at)) = (request.events.as_slice(), row.recorded_at) {
        return Ok(vec![recorded(
            request,
            event,
            row.stream_version,
            position(row.transaction_id, row.sequence)?,
            recorded_at,
        )?]);
    }
    let sql = include_str!("sql/inline_positions.sql")
        .replace("{schema}", &format!("\"{}\"", store.schema()));
    let placed: Vec<(i64, i64, i64, DateTime<Utc>)> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(request.stream_type.as_ref())
        .bind(request.stream_id.as_str())
        .bind(row.first_version)
        .bind(row.stream_version)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| PgProjectionError::database("inline_positions", e))?;
    if placed.len() != request.events.len() {
        return Err(PgProjectionError::database(
            "inline_positions",
            sqlx::Error::Protocol(format!(
                "found {} of the {} events just appended",
                placed.len(),
                request.events.len()
            )),
        )
        .into());
    }
    let mut events = Vec::with_capacity(request.events.len());
    for (event, (stream_version, sequence, transaction_id, recorded_at)) in
        request.events.iter().zip(placed)
    {
        events.push(recorded(
            request,
            event,
            stream_version,
            position(transaction_id, sequence)?,
            recorded_at,
        )?);
    }
    Ok(events)
}

/// One appended event as the log holds it.
fn recorded(
    request: &AppendRequest,
    event: &NewEvent,
    stream_version: i64,
    position: Position,
    recorded_at: DateTime<Utc>,
) -> cqrs_core::Result<RecordedEvent> {
    Ok(RecordedEvent {
        event_id: event.event_id,
        stream_type: request.stream_type.clone().into_owned(),
        stream_id: request.stream_id.clone(),
        stream_version: to_u64("stream_version", stream_version)?,
        position,
        event_type: event.event_type.clone().into_owned(),
        schema_version: event.schema_version,
        metadata: event.metadata.clone(),
        recorded_at,
        payload: event.payload.clone(),
    })
}
