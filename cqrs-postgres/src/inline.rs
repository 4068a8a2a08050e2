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
use sqlx::{
    AssertSqlSafe, Connection as _, Executor as _, PgConnection, Postgres, SqlSafeStr as _,
};
use tracing::trace;

use crate::PgEventStore;
use crate::checkpoints::{self, ProjectionQueries};
use crate::connections::{Lease, connection_lost};
use crate::projection_error::PgProjectionError;
use crate::rows::{OutcomeRow, position, to_u64};
use crate::schema::{Append, SchemaName};

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

/// An inline projection written as one SQL statement, which the store runs as part of
/// the append statement itself: the view changes in the same statement as the log, at no
/// extra round trip. Add it with [`PgEventStore::with_inline_sql`].
///
/// The statement reads the events of the append from `appended`, one row per event, with
/// the columns of the log (name them: their order is not part of the contract): `event_id` (uuid), `stream_type`, `stream_id`, `event_type`
/// (text), `stream_version`, `transaction_id`, `sequence` (bigint; the position is
/// `transaction_id.sequence`), `schema_version` (integer), `payload`, `metadata` (jsonb)
/// and `recorded_at` (timestamptz). Payloads are as the append writes them: at their
/// type's current schema version.
///
/// It is a data-modifying statement (`INSERT`, `UPDATE` or `DELETE`, as PostgreSQL allows
/// them in `WITH`) of its own, with these rules:
///
/// - **It draws its rows from `appended`.** An append that writes nothing (a conflict, a
///   repeated command id) leaves `appended` empty, and the statement still runs: what it
///   does must come from those rows.
/// - **`appended` may hold several appends, of different streams.** Appends that wait
///   at the same time are sent as one statement (see
///   [`PgEventStore::with_append_batches`]), which runs the projection once for all of
///   their events: never assume one stream, and take each row's stream from its own
///   columns.
/// - **One statement touches a row of the view once.** Several events for the same row
///   must be folded first (`GROUP BY`), or the server refuses the statement with
///   "command cannot affect row a second time" (for appends sent together, they are then
///   sent again one by one, more slowly).
/// - **It sees the view as it was before the statement,** like every part of one
///   statement; concurrent appends are serialised on the view's rows by the server as
///   for any `UPDATE` or `INSERT … ON CONFLICT`.
/// - **No bind parameters and no `WITH` of its own holding a data-modifying statement.**
///   Qualify the view's table with its schema.
/// - **It is code.** The statement is spliced into the append statement as written, like
///   a query passed to `sqlx::AssertSqlSafe`: write it in the program, never build it
///   from input.
///
/// If the statement fails, the append fails with
/// [`PgProjectionError::InlineSql`] and writes nothing: an inline projection can refuse
/// writes, so keep it simple. The store checks each statement with the server before its
/// first append (a syntax error, an unknown table or column surfaces then, naming the
/// projection, and nothing is written).
///
/// ```
/// use cqrs_postgres::PgInlineSql;
///
/// let balances = PgInlineSql::new(
///     "balances",
///     "INSERT INTO bank.balances AS b (account, balance)
///      SELECT stream_id, sum((payload->>'amount')::bigint)
///      FROM appended WHERE event_type = 'Deposited'
///      GROUP BY stream_id
///      ON CONFLICT (account) DO UPDATE SET balance = b.balance + excluded.balance",
/// )?;
/// assert_eq!(balances.name(), "balances");
///
/// let bad = PgInlineSql::new("counter", "UPDATE counters SET n = n + $1");
/// assert!(bad.is_err());
/// # Ok::<(), cqrs_postgres::PgProjectionError>(())
/// ```
#[derive(Debug, Clone)]
pub struct PgInlineSql {
    name: &'static str,
    version: u32,
    sql: Arc<str>,
}

impl PgInlineSql {
    /// The projection `name` (version 1), keeping its view with `sql`.
    ///
    /// # Errors
    ///
    /// [`PgProjectionError::InvalidInlineSql`] when `sql` is empty, never mentions
    /// `appended`, or refers to a bind parameter (`$1`, …).
    pub fn new(name: &'static str, sql: impl Into<String>) -> Result<Self, PgProjectionError> {
        let sql = sql.into();
        let sql = sql.trim().trim_end_matches(';').trim_end();
        let invalid = |reason| PgProjectionError::InvalidInlineSql {
            projection: name,
            reason,
        };
        if sql.is_empty() {
            return Err(invalid("the statement is empty"));
        }
        if !sql.to_ascii_lowercase().contains("appended") {
            return Err(invalid(
                "the statement does not read `appended`, the events of the append",
            ));
        }
        let bytes = sql.as_bytes();
        if bytes
            .windows(2)
            .any(|pair| pair[0] == b'$' && pair[1].is_ascii_digit())
        {
            return Err(invalid(
                "the statement refers to a bind parameter; it takes none: read the events \
                 from `appended`",
            ));
        }
        Ok(Self {
            name,
            version: 1,
            sql: sql.into(),
        })
    }

    /// The same projection with another version (reported in status, as
    /// [`Projection::VERSION`] is).
    #[must_use]
    pub fn with_version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// The projection's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The projection's version.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The statement, as it is spliced into the append statement.
    #[must_use]
    pub fn sql(&self) -> &str {
        &self.sql
    }
}

/// The columns `appended` gains for inline SQL projections (it always returns
/// `stream_version`, `transaction_id` and `sequence`).
const APPENDED_COLUMNS: &str = ", event_id, stream_type, stream_id, event_type, \
     schema_version, payload, metadata, recorded_at";

/// The inline projections of a store (none by default).
#[derive(Clone, Default)]
pub(crate) struct Inline {
    handlers: Vec<Arc<dyn InlineHandler>>,
    statements: Vec<PgInlineSql>,
    /// Whether their rows in the projections table were written and their statements
    /// checked (once per store value).
    registered: Arc<AtomicBool>,
}

impl fmt::Debug for Inline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.handlers.iter().map(|h| (h.name(), h.version())))
            .entries(self.statements.iter().map(|s| (s.name, s.version)))
            .finish()
    }
}

impl Inline {
    /// Whether an append needs a transaction of several statements: some projection is a
    /// handler in Rust. (Inline SQL runs inside the append statement.)
    pub(crate) fn has_handlers(&self) -> bool {
        !self.handlers.is_empty()
    }

    /// The same projections, not yet registered (for a store in another schema).
    pub(crate) fn unregistered(&self) -> Self {
        Self {
            handlers: self.handlers.clone(),
            statements: self.statements.clone(),
            registered: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The append statement `which` with the inline SQL projections spliced in, if there
    /// are any.
    pub(crate) fn append_sql(&self, which: Append, schema: &SchemaName) -> Option<Arc<str>> {
        if self.statements.is_empty() {
            return None;
        }
        Some(crate::schema::append_sql(
            which,
            schema,
            APPENDED_COLUMNS,
            &self.statement_ctes(),
        ))
    }

    fn statement_ctes(&self) -> String {
        self.statements
            .iter()
            .enumerate()
            .map(|(i, statement)| format!(",\ninline_{i} AS (\n{}\n)", statement.sql))
            .collect()
    }

    /// The names of the inline SQL projections, for an error none of them can be told
    /// apart in.
    pub(crate) fn statement_names(&self) -> Option<String> {
        (!self.statements.is_empty()).then(|| {
            self.statements
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join("`, `")
        })
    }

    /// Before the store's first append with inline projections: checks each SQL
    /// statement with the server, then writes the projections' rows, marked inline, so
    /// that status reports them and a wait on them returns at once.
    pub(crate) async fn register(&self, store: &PgEventStore) -> cqrs_core::Result<()> {
        if (self.handlers.is_empty() && self.statements.is_empty())
            || self.registered.load(Ordering::Acquire)
        {
            return Ok(());
        }
        let schema = SchemaName::parse(store.schema())?;
        let queries = ProjectionQueries::new(&schema);
        let mut conn = store
            .pool()
            .acquire()
            .await
            .map_err(|e| PgProjectionError::database("acquire", e))?;
        for statement in &self.statements {
            check(&mut conn, &schema, statement).await?;
        }
        let all = EventFilter::all();
        let names = self
            .handlers
            .iter()
            .map(|h| (h.name(), h.version(), h.filter()))
            .chain(self.statements.iter().map(|s| (s.name, s.version, &all)));
        for (name, version, filter) in names {
            checkpoints::register(&mut conn, &queries, name, version, filter, true).await?;
        }
        self.registered.store(true, Ordering::Release);
        Ok(())
    }
}

/// Has the server parse and analyse `statement` as it will run: after `appended`, here
/// drawn from the log with no rows.
async fn check(
    conn: &mut PgConnection,
    schema: &SchemaName,
    statement: &PgInlineSql,
) -> Result<(), PgProjectionError> {
    let sql = format!(
        "WITH appended AS (\n\
         SELECT stream_version, transaction_id, sequence{APPENDED_COLUMNS}\n\
         FROM {}.events WHERE false\n\
         ),\ninline_0 AS (\n{}\n)\nSELECT 1",
        schema.quoted(),
        statement.sql
    );
    conn.describe(AssertSqlSafe(sql).into_sql_str())
        .await
        .map(drop)
        .map_err(|source| PgProjectionError::InlineSql {
            projection: statement.name.to_owned(),
            source,
        })
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
        let mut inline = self.inline_projections().unregistered();
        inline.handlers.push(Arc::new(Handler {
            projection,
            filter: P::filter(),
        }));
        self.with_inline_projections(inline)
    }

    /// The same store, also keeping `projection`'s view with its SQL statement, run as
    /// part of every append statement: the view changes in the same statement as the log,
    /// so it never lags, and it costs no round trip (an append stays one statement unless
    /// a handler in Rust is added with [`with_inline`](Self::with_inline)). See
    /// [`PgInlineSql`] for what the statement reads and the rules it follows.
    ///
    /// Inline SQL projections are registered and reported like those of `with_inline`;
    /// events appended before the projection was added are not applied.
    ///
    /// ```no_run
    /// use cqrs_postgres::{PgEventStore, PgInlineSql};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = PgEventStore::connect("postgres://postgres@localhost/app").await?;
    /// sqlx::query(
    ///     "CREATE TABLE IF NOT EXISTS public.balances \
    ///      (account text PRIMARY KEY, balance bigint NOT NULL)",
    /// )
    /// .execute(store.pool())
    /// .await?;
    /// let store = store.with_inline_sql(PgInlineSql::new(
    ///     "balances",
    ///     "INSERT INTO public.balances AS b (account, balance)
    ///      SELECT stream_id, sum((payload->>'amount')::bigint)
    ///      FROM appended WHERE event_type = 'Deposited'
    ///      GROUP BY stream_id
    ///      ON CONFLICT (account) DO UPDATE SET balance = b.balance + excluded.balance",
    /// )?);
    /// # drop(store);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn with_inline_sql(self, projection: PgInlineSql) -> Self {
        let mut inline = self.inline_projections().unregistered();
        inline.statements.push(projection);
        self.with_inline_projections(inline)
    }
}

/// Runs the store's append statement and the inline projections in one transaction.
///
/// The inner result is the append statement's, for the store to interpret (a conflict,
/// a unique violation, a lost connection, also when it was lost during the commit); the
/// outer error is an inline projection's failure or a commit the server refused, after
/// which nothing is written.
pub(crate) async fn append(
    store: &PgEventStore,
    mut lease: Lease<'_>,
    request: &AppendRequest,
    query: QueryAs<'_, Postgres, OutcomeRow, PgArguments>,
) -> cqrs_core::Result<Result<Option<OutcomeRow>, sqlx::Error>> {
    let inline = store.inline_projections();
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
    match committed {
        Ok(()) => Ok(Ok(Some(row))),
        // Whether the commit went through is unknown: the store's to find out.
        Err(error) if connection_lost(&error) => Ok(Err(error)),
        Err(error) => Err(PgProjectionError::database("commit", error).into()),
    }
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
    let placed: Vec<(i64, i64, i64, DateTime<Utc>)> =
        sqlx::query_as(AssertSqlSafe(Arc::clone(store.inline_positions_sql())))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> Option<&'static str> {
        match PgInlineSql::new("view", sql) {
            Err(PgProjectionError::InvalidInlineSql { projection, reason }) => {
                assert_eq!(projection, "view");
                Some(reason)
            }
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => None,
        }
    }

    #[test]
    fn statements_that_cannot_be_inline_projections_are_refused() {
        for sql in ["", "  ;\n", "DELETE FROM v", "UPDATE v SET n = n + 1"] {
            assert!(refused(sql).is_some(), "{sql:?} was accepted");
        }
        for sql in [
            "INSERT INTO v SELECT stream_id, $1 FROM appended",
            "UPDATE v SET n = n + 1 FROM appended WHERE v.id = $2",
        ] {
            assert!(
                refused(sql).is_some_and(|reason| reason.contains("bind parameter")),
                "{sql:?}"
            );
        }
    }

    #[test]
    fn accepted_statements_lose_trailing_semicolons_and_keep_dollar_quotes() {
        let sql = "INSERT INTO v SELECT stream_id, $$x$$ FROM appended ;\n";
        let statement = PgInlineSql::new("view", sql).expect("accepted");
        assert_eq!(
            statement.sql(),
            "INSERT INTO v SELECT stream_id, $$x$$ FROM appended"
        );
        assert_eq!(statement.with_version(3).version(), 3);
    }

    #[test]
    fn each_statement_is_spliced_into_the_append_as_a_cte_of_its_own() {
        let schema = SchemaName::parse("shop").expect("valid");
        let mut inline = Inline::default();
        assert!(inline.append_sql(Append::Full, &schema).is_none());
        for name in ["first", "second"] {
            inline.statements.push(
                PgInlineSql::new(name, format!("INSERT INTO {name} SELECT 1 FROM appended"))
                    .expect("accepted"),
            );
        }
        for which in [Append::Full, Append::Plain] {
            let sql = inline.append_sql(which, &schema).expect("spliced");
            assert!(sql.contains("inline_0 AS (\nINSERT INTO first SELECT 1 FROM appended\n)"));
            assert!(sql.contains("inline_1 AS (\nINSERT INTO second SELECT 1 FROM appended\n)"));
            assert!(sql.contains(&format!("sequence{APPENDED_COLUMNS}")));
            assert!(!sql.contains("{inline"));
        }
        assert_eq!(inline.statement_names().as_deref(), Some("first`, `second"));
    }
}
