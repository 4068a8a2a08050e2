//! Inline projections: views updated inside the transaction of the append itself, by a
//! handler in Rust (run here, in the append's transaction) or by SQL spliced into the
//! append statement (`inline_sql.rs`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_core::store::{NewEvent, RecordedEvent};
use cqrs_core::{EventFilter, Position};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, PgPool};
use tokio::sync::OnceCell;
use tracing::trace;

use super::atomic::{Unit, UnitRow};
use super::connections::Lease;
use super::inline_sql::{self, APPENDED_COLUMNS, PgInlineSql};
use super::prepared::Prepared;
use crate::db::{
    Error, OutcomeRow, Projections, SchemaName, Splice, Sql, Statement, Statements,
    check_projection_name, connection_lost, position, to_u64,
};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One inline view, its type erased: the store's side of what the projection wing's
/// views implement (see `projection::inline`).
pub(crate) trait InlineHandler: Send + Sync {
    fn name(&self) -> &'static str;
    fn version(&self) -> u32;
    fn filter(&self) -> &EventFilter;
    /// Creates the view's tables and points readers at them, in a transaction of the
    /// store's schema, when the store registers its inline projections.
    fn setup<'a>(&'a self, conn: &'a mut PgConnection) -> BoxFuture<'a, Result<(), Error>>;
    /// Applies the events of one append (those its filter keeps) and writes what the
    /// view buffered.
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, cqrs_core::Result<()>>;
}

/// The inline projections of a store (none by default).
#[derive(Clone, Default)]
pub(crate) struct Inline {
    handlers: Vec<Arc<dyn InlineHandler>>,
    statements: Vec<PgInlineSql>,
    /// Set once their rows in the projections table are written and their statements
    /// checked (once per store; callers at the same moment wait for the one doing it).
    registered: Arc<OnceCell<()>>,
    /// The statement that opens the append's transaction when handlers run in it: the
    /// store's schema first on `search_path` (see [`SchemaName::begin_view_transaction`]).
    begin: Arc<str>,
}

impl fmt::Debug for Inline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.handlers.iter().map(|h| (h.name(), h.version())))
            .entries(self.statements.iter().map(|s| (s.name(), s.version())))
            .finish()
    }
}

impl Inline {
    /// The same projections for a store of their own in `schema`, not yet registered.
    pub(crate) fn for_store(&self, schema: &SchemaName) -> Self {
        Self {
            handlers: self.handlers.clone(),
            statements: self.statements.clone(),
            registered: Arc::new(OnceCell::new()),
            // The append's transaction: its commit stays synchronous.
            begin: schema.begin_view_transaction(true).into(),
        }
    }

    /// Adds a view whose handler runs in the append's transaction.
    pub(crate) fn add_handler(&mut self, handler: Arc<dyn InlineHandler>) {
        self.handlers.push(handler);
    }

    /// Adds a projection whose SQL runs inside the append statement.
    pub(crate) fn add_statement(&mut self, statement: PgInlineSql) {
        self.statements.push(statement);
    }

    /// Checks the names of the inline handlers (those of inline SQL were checked by
    /// [`PgInlineSql::new`]).
    pub(crate) fn check_names(&self) -> Result<(), Error> {
        self.handlers
            .iter()
            .try_for_each(|handler| check_projection_name(handler.name()))
    }

    /// Whether an append needs a transaction of several statements: some projection is a
    /// handler in Rust. (Inline SQL runs inside the append statement.)
    pub(crate) fn has_handlers(&self) -> bool {
        !self.handlers.is_empty()
    }

    /// The store's statements, with the inline SQL projections spliced into the append
    /// statements.
    pub(crate) fn statements(&self, schema: &SchemaName) -> Statements {
        if self.statements.is_empty() {
            return Statements::new(schema, Splice::default());
        }
        let ctes = inline_sql::ctes(&self.statements);
        Statements::new(
            schema,
            Splice {
                columns: APPENDED_COLUMNS,
                statements: &ctes,
            },
        )
    }

    /// The names of the inline SQL projections, for an error none of them can be told
    /// apart in; `None` when there are none.
    pub(crate) fn statement_names(&self) -> Option<String> {
        (!self.statements.is_empty()).then(|| {
            self.statements
                .iter()
                .map(PgInlineSql::name)
                .collect::<Vec<_>>()
                .join("`, `")
        })
    }

    /// Checks each SQL statement with the server, then writes the projections' rows,
    /// marked inline, so that status reports them and a wait on them returns at once.
    /// Done once per store: by [`migrate`](crate::PgEventStore::migrate), a runner's
    /// start, or else the first append; callers at the same moment share one
    /// registration.
    pub(crate) async fn register(
        &self,
        pool: &PgPool,
        schema: &SchemaName,
        projections: &Projections,
    ) -> Result<(), Error> {
        if self.handlers.is_empty() && self.statements.is_empty() {
            return Ok(());
        }
        self.registered
            .get_or_try_init(|| self.register_now(pool, schema, projections))
            .await?;
        Ok(())
    }

    async fn register_now(
        &self,
        pool: &PgPool,
        schema: &SchemaName,
        projections: &Projections,
    ) -> Result<(), Error> {
        let mut conn = pool
            .acquire()
            .await
            .map_err(|e| Error::database("acquire", e))?;
        for statement in &self.statements {
            inline_sql::check(&mut conn, schema, statement).await?;
        }
        if !self.handlers.is_empty() {
            // The views' tables, in the store's schema, before any append needs them.
            let mut tx =
                sqlx::Connection::begin_with(&mut *conn, AssertSqlSafe(Arc::clone(&self.begin)))
                    .await
                    .map_err(|e| Error::database("begin", e))?;
            for handler in &self.handlers {
                handler.setup(&mut tx).await?;
            }
            tx.commit()
                .await
                .map_err(|e| Error::database("commit", e))?;
        }
        let all = EventFilter::all();
        let names = self
            .handlers
            .iter()
            .map(|h| (h.name(), h.version(), h.filter()))
            .chain(
                self.statements
                    .iter()
                    .map(|s| (s.name(), s.version(), &all)),
            );
        for (name, version, filter) in names {
            projections
                .register(&mut conn, name, version, filter, true)
                .await?;
        }
        Ok(())
    }

    /// Runs the append statement `query` and the handlers in one transaction on `lease`.
    ///
    /// The inner result is the append statement's, for the append path to interpret (a
    /// conflict, a unique violation, a lost connection, also when it was lost during the
    /// commit); the outer error is a handler's failure or a commit the server refused,
    /// after which nothing is written.
    pub(crate) async fn append_in_transaction(
        &self,
        mut lease: Lease<'_>,
        statements: &Statements,
        append: &Prepared,
        query: Sql,
    ) -> cqrs_core::Result<sqlx::Result<Option<OutcomeRow>>> {
        let mut tx = match self.begin(&mut lease).await {
            Ok(tx) => tx,
            Err(error) => return Ok(Err(error)),
        };
        let row = match query.try_fetch_optional::<OutcomeRow, _>(&mut *tx).await {
            Ok(Some(row)) if !row.duplicate => row,
            // A conflict, a duplicate command or an error: nothing was written. Rolling
            // back leaves the connection ready for the next command.
            other => {
                let rolled_back = tx.rollback().await;
                lease.release(&rolled_back);
                return Ok(other);
            }
        };
        // A failing handler drops the transaction, and the lease with it: the
        // connection, whose rollback is still pending, is closed rather than reused.
        let events = appended(&mut tx, statements, append, &row).await?;
        for handler in &self.handlers {
            trace!(projection = handler.name(), "inline projection");
            handler.apply(&mut tx, &events).await?;
        }
        let committed = tx.commit().await;
        lease.release(&committed);
        match committed {
            Ok(()) => Ok(Ok(Some(row))),
            // Whether the commit went through is unknown: the append path finds out.
            Err(error) if connection_lost(&error) => Ok(Err(error)),
            Err(error) => Err(Error::database("commit", error).into()),
        }
    }

    /// What [`append_in_transaction`](Self::append_in_transaction) does for an atomic
    /// unit: its statement, then the handlers over every event it wrote (in the unit's
    /// order), in one transaction.
    pub(crate) async fn append_unit_in_transaction(
        &self,
        mut lease: Lease<'_>,
        statements: &Statements,
        unit: &Unit,
        query: Sql,
    ) -> cqrs_core::Result<sqlx::Result<Vec<UnitRow>>> {
        let mut tx = match self.begin(&mut lease).await {
            Ok(tx) => tx,
            Err(error) => return Ok(Err(error)),
        };
        let mut rows = match query.try_fetch_all::<UnitRow, _>(&mut *tx).await {
            Ok(rows) if rows.iter().any(UnitRow::is_written) => rows,
            // Refused, a duplicate or an error: nothing was written.
            other => {
                let rolled_back = tx.rollback().await;
                lease.release(&rolled_back);
                return Ok(other);
            }
        };
        rows.sort_by_key(UnitRow::append);
        let mut events = Vec::new();
        for (append, row) in unit.appends.iter().zip(&rows) {
            let outcome = row.written()?;
            let placed = OutcomeRow {
                duplicate: false,
                first_version: i64::try_from(outcome.first_version).unwrap_or(i64::MAX),
                stream_version: i64::try_from(outcome.stream_version).unwrap_or(i64::MAX),
                transaction_id: i64::try_from(outcome.position.commit()).unwrap_or(i64::MAX),
                sequence: i64::try_from(outcome.position.sequence()).unwrap_or(i64::MAX),
                recorded_at: None,
                holder_type: None,
                holder_id: None,
            };
            events.extend(appended(&mut tx, statements, append, &placed).await?);
        }
        for handler in &self.handlers {
            trace!(projection = handler.name(), "inline projection");
            handler.apply(&mut tx, &events).await?;
        }
        let committed = tx.commit().await;
        lease.release(&committed);
        match committed {
            Ok(()) => Ok(Ok(rows)),
            Err(error) if connection_lost(&error) => Ok(Err(error)),
            Err(error) => Err(Error::database("commit", error).into()),
        }
    }

    /// Opens the append's transaction on `lease`. The store's own sessions have its schema
    /// first on their path already; a pool's connection gets it for the transaction.
    async fn begin<'l>(
        &self,
        lease: &'l mut Lease<'_>,
    ) -> sqlx::Result<sqlx::Transaction<'l, sqlx::Postgres>> {
        let in_store_schema = lease.in_store_schema();
        let conn = lease.conn()?;
        if in_store_schema {
            conn.begin().await
        } else {
            conn.begin_with(AssertSqlSafe(Arc::clone(&self.begin)))
                .await
        }
    }
}

/// The events the append wrote, as the log holds them.
async fn appended(
    conn: &mut PgConnection,
    statements: &Statements,
    append: &Prepared,
    row: &OutcomeRow,
) -> cqrs_core::Result<Vec<RecordedEvent>> {
    let request = &append.request;
    // A single event sits where the append's outcome says: no need to ask. (Several
    // events of one append need not have consecutive sequences, so they are looked up.)
    if let ([event], Some(recorded_at)) = (request.events.as_slice(), row.recorded_at) {
        return Ok(vec![recorded(
            append,
            event,
            row.stream_version,
            position(row.transaction_id, row.sequence)?,
            recorded_at,
        )?]);
    }
    let placed: Vec<(i64, i64, i64, DateTime<Utc>)> = statements
        .get(Statement::InlinePositions)
        .bind(request.stream_type.as_ref())
        .bind(request.stream_id.as_str())
        .bind(row.first_version)
        .bind(row.stream_version)
        .fetch_all(&mut *conn)
        .await?;
    if placed.len() != request.events.len() {
        return Err(Error::UnexpectedRow {
            statement: Statement::InlinePositions.name(),
            problem: format!(
                "found {} of the {} events just appended",
                placed.len(),
                request.events.len()
            ),
        }
        .into());
    }
    let mut events = Vec::with_capacity(request.events.len());
    for (event, (stream_version, sequence, transaction_id, recorded_at)) in
        request.events.iter().zip(placed)
    {
        events.push(recorded(
            append,
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
    append: &Prepared,
    event: &NewEvent,
    stream_version: i64,
    position: Position,
    recorded_at: DateTime<Utc>,
) -> cqrs_core::Result<RecordedEvent> {
    Ok(RecordedEvent {
        event_id: event.event_id,
        stream_type: append.request.stream_type.clone().into_owned(),
        stream_id: append.request.stream_id.clone(),
        stream_version: to_u64("stream_version", stream_version)?,
        position,
        event_type: event.event_type.clone().into_owned(),
        schema_version: event.schema_version,
        metadata: event.metadata.clone(),
        recorded_at,
        payload: event.payload.clone(),
    })
}
