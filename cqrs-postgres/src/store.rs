#![allow(
    clippy::result_large_err,
    reason = "helpers of `EventStore` methods share their error type, cqrs_core::Error"
)]

use std::sync::Arc;

use async_trait::async_trait;
use cqrs_core::{
    AppendOutcome, AppendRequest, EventFilter, EventStore, LoadedStream, Position, RecordedEvent,
    ReplayEvent, Snapshot,
};
use sqlx::postgres::{PgDatabaseError, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgPool};
use tracing::{Instrument, trace, warn};
use uuid::Uuid;

use crate::batch::{Batcher, Reply};
use crate::connections::{CommandConnections, Lease, connection_lost};
use crate::error::Statement;
use crate::inline::Inline;
use crate::notify::{Notifier, PgNotify};
use crate::rows::{
    EventRow, LogRow, OutcomeRow, PositionRow, ReplayRow, SnapshotRow, position, to_i64_saturating,
    to_u32, to_u64,
};
use crate::schema::{Append, Queries, SchemaName};
use crate::{Error, MIGRATOR, PgProjectionError, Result};

/// The schema a store uses unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "cqrs";

/// Constraint names the append maps onto typed errors (see the migrations).
const STREAM_VERSION_KEY: &str = "events_stream_version_key";
const EVENT_ID_KEY: &str = "events_event_id_key";
const COMMAND_ID_KEY: &str = "commands_pkey";

/// The PostgreSQL event store: an [`EventStore`] on a [`sqlx::PgPool`].
///
/// All its tables live in one PostgreSQL schema (`cqrs` unless set with
/// [`with_schema`](Self::with_schema)), so several applications, or parallel tests, can
/// share a database. Create the tables with [`migrate`](Self::migrate).
///
/// - **Append** is one statement (one round trip) for any number of events. The unique
///   key on (stream type, stream id, version) makes a lost race an
///   [`Error::Conflict`](cqrs_core::Error::Conflict); the command id is recorded by the
///   same statement; a `NOTIFY` on [`channel`](Self::channel) announces the commit
///   (see [`PgNotify`]).
/// - **Load for a command** fetches the snapshot and the events after it in one round
///   trip.
/// - **The global log** is read in commit-safe order: positions are
///   (transaction id, sequence) and only transactions below the reader's snapshot xmin are
///   returned, so a reader that remembers its position never skips an event that commits
///   late.
///
/// Clones are cheap handles to the same pool.
///
/// # Global order
///
/// An event's [`Position`] is `(transaction id, sequence)`: the 64-bit id (`xid8`) of
/// the transaction that appended it, then a store-wide identity number. Sequence order
/// alone would skip events: a transaction can take sequence 10, stay open, and commit
/// after another committed sequence 11, which a reader may already have passed.
///
/// [`read_all`](EventStore::read_all) and [`head`](EventStore::head) only return events
/// whose transaction id is below the `xmin` of the statement's snapshot
/// (`pg_snapshot_xmin(pg_current_snapshot())`). Every transaction below `xmin` has ended,
/// and every transaction still running, or not yet started, has an id at or above it, so
/// the set of visible events below `xmin` can never grow again: once a reader has passed
/// a position, nothing new appears before it. A long-running transaction anywhere in the
/// cluster holds `xmin` back, which delays readers (never reorders them).
///
/// Within a stream, positions follow versions: the append is the first (and only) write
/// of its transaction, so its transaction id is assigned after it has seen the previous
/// version committed, and ids are handed out in increasing order. (An append that came
/// after other writes in the same transaction would carry an older id and could sort
/// before the version it follows.) Sequences number the events of one append in order.
///
/// ```no_run
/// use cqrs_core::{AppendRequest, EventStore, NewEvent};
/// use cqrs_postgres::PgEventStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PgEventStore::connect("postgres://postgres@localhost/app")
///     .await?
///     .with_schema("billing")?;
/// store.migrate().await?;
///
/// let opened = NewEvent::new("Opened", 1, serde_json::json!({ "owner": "ada" }));
/// let outcome = store
///     .append(AppendRequest::new("account", "a-1", 0, vec![opened]))
///     .await?;
/// assert_eq!(outcome.stream_version, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    schema: SchemaName,
    channel: String,
    queries: Queries,
    notify: PgNotify,
    notifier: Notifier,
    inline: Inline,
    commands: Arc<CommandConnections>,
    batcher: Batcher,
}

/// What a store is built from.
struct Settings {
    pool: PgPool,
    schema: SchemaName,
    notify: PgNotify,
    inline: Inline,
    commands: Arc<CommandConnections>,
    batches: usize,
}

/// How many statements carrying appends sent together may be in flight by default (see
/// [`PgEventStore::with_append_batches`]).
const DEFAULT_BATCHES: usize = 1;

impl PgEventStore {
    /// A store on `pool`, in the schema `cqrs`.
    ///
    /// A command's load and append run on up to `max_connections` connections the store
    /// opens with the pool's options and keeps (see
    /// [`with_command_connections`](Self::with_command_connections)); everything else runs
    /// on the pool. sqlx pools also ping a connection before handing it out unless built
    /// with `test_before_acquire(false)`, a round trip per use, so turn that off for pools
    /// dedicated to the store ([`connect`](Self::connect) does).
    ///
    /// ```no_run
    /// use cqrs_postgres::PgEventStore;
    /// use sqlx::postgres::PgPoolOptions;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = PgPoolOptions::new()
    ///     .max_connections(16)
    ///     .test_before_acquire(false)
    ///     .connect("postgres://postgres@localhost/app")
    ///     .await?;
    /// let store = PgEventStore::new(pool);
    /// assert_eq!(store.schema(), "cqrs");
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        let schema = match SchemaName::parse(DEFAULT_SCHEMA) {
            Ok(schema) => schema,
            Err(error) => unreachable!("the default schema name is valid: {error}"),
        };
        let commands = Arc::new(CommandConnections::new(
            usize::try_from(pool.options().get_max_connections()).unwrap_or(usize::MAX),
        ));
        Self::build(Settings {
            pool,
            schema,
            notify: PgNotify::default(),
            inline: Inline::default(),
            commands,
            batches: DEFAULT_BATCHES,
        })
    }

    /// Connects a pool of up to 10 connections to `url` and makes a store on it (schema
    /// `cqrs`). The pool does not ping connections before use.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when the URL is malformed or the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .test_before_acquire(false)
            .connect(url)
            .await
            .map_err(Error::Connect)?;
        Ok(Self::new(pool))
    }

    /// The same store in another schema (on the same pool).
    ///
    /// The name must match `^[a-z_][a-z0-9_]{0,55}$` and not start with `pg_`: it is the
    /// one identifier spliced into the store's SQL, so it is checked strictly and quoted.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use cqrs_postgres::PgEventStore;
    ///
    /// let pool = sqlx::PgPool::connect_lazy("postgres://postgres@localhost/app")?;
    /// let store = PgEventStore::new(pool).with_schema("tenant_7")?;
    /// assert_eq!(store.channel(), "tenant_7_events");
    /// assert!(store.clone().with_schema("Robert'); DROP TABLE students;--").is_err());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSchema`] for a name outside the accepted alphabet.
    pub fn with_schema(self, schema: &str) -> Result<Self> {
        let schema = SchemaName::parse(schema)?;
        Ok(Self::build(Settings {
            schema,
            // Registered in the projections table of each schema.
            inline: self.inner.inline.unregistered(),
            ..self.settings()
        }))
    }

    /// The same store announcing appends as `notify` says (default
    /// [`PgNotify::AfterCommit`]).
    #[must_use]
    pub fn with_notify(self, notify: PgNotify) -> Self {
        Self::build(Settings {
            notify,
            ..self.settings()
        })
    }

    /// The same store running `inline` inside the transaction of every append.
    pub(crate) fn with_inline_projections(self, inline: Inline) -> Self {
        Self::build(Settings {
            inline,
            ..self.settings()
        })
    }

    pub(crate) fn inline_projections(&self) -> &Inline {
        &self.inner.inline
    }

    /// Where the events of an append of several events sit in the log (for inline
    /// handlers).
    pub(crate) fn inline_positions_sql(&self) -> &Arc<str> {
        &self.inner.queries.inline_positions
    }

    /// The same store keeping up to `max` connections of its own for the statements on
    /// a command's path (default: as many as the pool may open); 0 runs them, and the
    /// notifications after commits, on the pool.
    ///
    /// A command's load and its append (with its inline projections, if any) are one
    /// short statement each. sqlx's pool checks every connection that comes back to it
    /// with a round trip of its own, which for such a statement nearly doubles what the
    /// server handles, so by default the store runs them on connections it keeps itself:
    /// opened on first need with the pool's connect options, reused without a check (one
    /// idle for more than ten seconds is checked first), and closed when the store is
    /// dropped. One that fails in a way that leaves its state unknown (a lost connection,
    /// a session the server ended, a statement abandoned mid-way) is closed, not reused;
    /// the statement it failed is sent once more on another connection (an append with
    /// the same event ids and expected version, so that at most one of the two commits,
    /// and one that did is found by its events), and the other idle connections are
    /// checked before their next use. Everything else (reading the log, snapshots,
    /// migrations, projections) uses the pool.
    ///
    /// So a store can hold up to the pool's size again in connections (plus one for its
    /// notifications, with [`PgNotify::AfterCommit`]): count them when sizing the server's
    /// `max_connections`, or pass a smaller `max` (commands beyond it wait for a
    /// connection).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use cqrs_postgres::PgEventStore;
    /// use sqlx::postgres::PgPoolOptions;
    ///
    /// let pool = PgPoolOptions::new()
    ///     .max_connections(16)
    ///     .connect_lazy("postgres://postgres@localhost/app")?;
    /// let store = PgEventStore::new(pool);
    /// assert_eq!(store.command_connections(), 16);
    /// let on_the_pool = store.with_command_connections(0);
    /// assert_eq!(on_the_pool.command_connections(), 0);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn with_command_connections(self, max: usize) -> Self {
        Self::build(Settings {
            commands: Arc::new(CommandConnections::new(max)),
            ..self.settings()
        })
    }

    /// How many connections of its own the store may keep for commands (0: they run on
    /// the pool); see [`with_command_connections`](Self::with_command_connections).
    #[must_use]
    pub fn command_connections(&self) -> usize {
        self.inner.commands.max()
    }

    /// The same store sending appends that wait at the same time together, by at most
    /// `in_flight` statements at once (default 1); 0 sends every append on a statement of
    /// its own, as many at once as there are command connections.
    ///
    /// Most of what one append costs the server is the statement itself (its round
    /// trip, its transaction, its commit), not the events it writes. So while a statement
    /// is in flight, the appends that come in wait, and the next free slot sends all of
    /// them (up to 64 appends or 1,024 events) as one statement: under concurrency, many
    /// commands share one commit. There is no timer: an append that finds a slot free is
    /// sent at once, and one that waits, waits for a statement already running. On a
    /// 2-core machine, 16 concurrent writers ran about twice as fast as with appends sent
    /// one by one, and one statement in flight beat two; a server with cores to spare for
    /// this process's appends may do better with more.
    ///
    /// Each append keeps its own outcome: it is checked against its own expected version,
    /// and one whose stream is at another version is refused while the others are
    /// written. A statement that fails (an append raced another one still in flight, an
    /// event id is taken, an inline SQL projection refused the events) is sent again one
    /// append at a time, so that each gets the outcome that is its own. A statement whose
    /// connection fails, or whose sender is dropped, with it in flight, is sent again one
    /// append at a time as appends whose outcome is unknown (see
    /// [`with_command_connections`](Self::with_command_connections)). An append whose
    /// caller gives up while it waits is not sent.
    ///
    /// A command id is checked as for an append sent alone: an append whose command id is
    /// recorded gets the original outcome, and the others record theirs. Appends are sent
    /// together by a store without inline handlers and without
    /// [`PgNotify::InTransaction`], never two for one stream or with one command id in a
    /// statement; a store with either sends each append on its own, as before. The events of appends sent
    /// together share a transaction id in their positions, in the order the appends were
    /// made. Inline SQL projections see all of them in `appended`: a statement that
    /// changes one row per key must group by it (as it must for an append of several
    /// events), or the statement fails and the appends go one by one.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use cqrs_postgres::PgEventStore;
    ///
    /// let pool = sqlx::PgPool::connect_lazy("postgres://postgres@localhost/app")?;
    /// let store = PgEventStore::new(pool);
    /// assert_eq!(store.append_batches(), 1);
    /// let one_by_one = store.with_append_batches(0);
    /// assert_eq!(one_by_one.append_batches(), 0);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn with_append_batches(self, in_flight: usize) -> Self {
        Self::build(Settings {
            batches: in_flight,
            ..self.settings()
        })
    }

    /// How many statements carrying appends sent together may be in flight (0: every
    /// append is sent on its own); see [`with_append_batches`](Self::with_append_batches).
    #[must_use]
    pub fn append_batches(&self) -> usize {
        self.inner.batcher.in_flight()
    }

    /// A connection for a command's statement (see
    /// [`with_command_connections`](Self::with_command_connections)).
    pub(crate) async fn command_connection(&self) -> Result<Lease<'_>, sqlx::Error> {
        self.inner.commands.lease(&self.inner.pool).await
    }

    /// What the store was built from, to build a variant of it.
    fn settings(&self) -> Settings {
        Settings {
            pool: self.inner.pool.clone(),
            schema: self.inner.schema.clone(),
            notify: self.inner.notify,
            inline: self.inner.inline.clone(),
            commands: Arc::clone(&self.inner.commands),
            batches: self.inner.batcher.in_flight(),
        }
    }

    fn build(settings: Settings) -> Self {
        let Settings {
            pool,
            schema,
            notify,
            inline,
            commands,
            batches,
        } = settings;
        let mut queries = Queries::new(&schema);
        for (which, sql) in [
            (Append::Full, &mut queries.append),
            (Append::Plain, &mut queries.append_plain),
            (Append::Batch, &mut queries.append_batch),
            (Append::BatchPlain, &mut queries.append_batch_plain),
        ] {
            if let Some(append) = inline.append_sql(which, &schema) {
                *sql = append;
            }
        }
        Self {
            inner: Arc::new(Inner {
                pool,
                channel: schema.channel(),
                queries,
                schema,
                notify,
                // With no connections of its own for commands, none for notifications.
                notifier: Notifier::new(commands.max() > 0),
                inline,
                commands,
                batcher: Batcher::new(batches),
            }),
        }
    }

    /// How the store announces appends.
    #[must_use]
    pub fn notify(&self) -> PgNotify {
        self.inner.notify
    }

    /// The pool the store runs on.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The PostgreSQL schema holding the store's tables.
    #[must_use]
    pub fn schema(&self) -> &str {
        self.inner.schema.as_str()
    }

    /// The `NOTIFY` channel appends are announced on (`<schema>_events`), with the
    /// position of an append's last event (`"<commit>.<sequence>"`) as the payload; see
    /// [`PgNotify`] for when.
    ///
    /// A reader `LISTEN`s to wake up at once instead of polling; it must still read
    /// from its own position, since a notification may arrive before earlier
    /// transactions have ended and the event becomes readable.
    #[must_use]
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Creates the schema if needed and applies the store's migrations
    /// ([`MIGRATOR`]) inside it, tracked in its own `_cqrs_migrations` table. Safe to
    /// call from several processes at once: sqlx serialises migrators with an advisory
    /// lock.
    ///
    /// Nothing runs this implicitly: call it at deployment or at startup.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = cqrs_postgres::PgEventStore::connect("postgres://postgres@localhost/app").await?;
    /// store.migrate().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when no connection can be had or the schema cannot be created,
    /// [`Error::Migrate`] when a migration fails.
    pub async fn migrate(&self) -> Result<()> {
        let span = tracing::info_span!("cqrs_postgres.migrate", schema = self.schema());
        async {
            // The migrations' names are unqualified and resolve through `search_path`,
            // which is set on a connection taken out of the pool for good, so no pooled
            // connection ever carries the changed path.
            let mut conn = self
                .inner
                .pool
                .acquire()
                .await
                .map_err(|e| Error::database(Statement::Migrate, e))?
                .detach();
            let result = self.migrate_on(&mut conn).await;
            if let Err(error) = sqlx::Connection::close(conn).await {
                tracing::debug!(%error, "closing the migration connection failed");
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn migrate_on(&self, conn: &mut sqlx::PgConnection) -> Result<()> {
        let quoted = self.inner.schema.quoted();
        let create = format!("CREATE SCHEMA IF NOT EXISTS {quoted}");
        log_statement(Statement::Migrate);
        match sqlx::query(AssertSqlSafe(create)).execute(&mut *conn).await {
            Ok(_) => {}
            // Two processes creating the schema at once: the other one won, which is fine.
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {}
            Err(error) => return Err(Error::database(Statement::Migrate, error)),
        }
        sqlx::query("SELECT set_config('search_path', $1, false)")
            .bind(&quoted)
            .execute(&mut *conn)
            .await
            .map_err(|e| Error::database(Statement::Migrate, e))?;
        // `run_direct` is what `Migrator::run` calls once it has a connection; calling it
        // on the connection itself keeps this future `Send` (sqlx's `Acquire` bound on
        // `run` is not general enough for that).
        MIGRATOR
            .run_direct(None, conn, false)
            .await
            .map_err(|source| Error::Migrate {
                schema: self.schema().to_owned(),
                source: Box::new(source),
            })
    }

    async fn append_once(&self, request: AppendRequest) -> cqrs_core::Result<AppendOutcome> {
        let append = Arc::new(Prepared::new(request)?);
        // With inline handlers the append and the handlers share one transaction; without,
        // the append stays one statement (inline SQL projections are part of it).
        self.inner.inline.register(self).await?;
        let outcome = if self.batched() {
            match self.inner.batcher.append(self, &append).await {
                Reply::Done(outcome) => outcome?,
                Reply::Alone { unknown } => self.append_alone(&append, unknown).await?,
            }
        } else {
            self.append_alone(&append, false).await?
        };
        if !outcome.duplicate && self.inner.notify == PgNotify::AfterCommit {
            self.inner
                .notifier
                .announce(&self.inner.pool, &self.inner.channel, outcome.position);
        }
        Ok(outcome)
    }

    /// Whether `request` waits to be sent with others (see `batch.rs`): any append, by a
    /// store that batches, has no inline handlers and does not notify in the statement.
    fn batched(&self) -> bool {
        self.inner.batcher.in_flight() > 0
            && self.inner.notify != PgNotify::InTransaction
            && !self.inner.inline.has_handlers()
    }

    /// The statement for a batch of appends: `append_batch.sql`, or
    /// `append_batch_plain.sql` when `plain` (no append carries a command id).
    pub(crate) fn append_batch_sql(&self, plain: bool) -> &Arc<str> {
        if plain {
            &self.inner.queries.append_batch_plain
        } else {
            &self.inner.queries.append_batch
        }
    }

    /// Has the idle command connections checked before their next use (one was lost).
    pub(crate) fn check_idle_before_use(&self) {
        self.inner.commands.check_idle_before_use();
    }

    /// Sends `append` on its own statement (or transaction, with inline handlers).
    /// `sent_again`: it may already have been written by a statement whose connection
    /// failed, so the log's keys refusing it may mean it is there.
    pub(crate) async fn append_alone(
        &self,
        append: &Prepared,
        mut sent_again: bool,
    ) -> cqrs_core::Result<AppendOutcome> {
        let request = &append.request;
        let count = request.events.len();
        let mut event_ids = Vec::with_capacity(count);
        let mut event_types = Vec::with_capacity(count);
        let mut payloads = Vec::with_capacity(count);
        let mut metadata = Vec::with_capacity(count);
        for event in &request.events {
            event_ids.push(event.event_id);
            event_types.push(event.event_type.as_ref());
            payloads.push(Json(&event.payload));
            metadata.push(Json(&event.metadata));
        }
        let result = loop {
            log_statement(Statement::Append);
            // Without a command id or a NOTIFY in the statement, the plainer statement.
            let notify_in_statement = self.inner.notify == PgNotify::InTransaction;
            let plain = request.command_id.is_none() && !notify_in_statement;
            let sql = if plain {
                &self.inner.queries.append_plain
            } else {
                &self.inner.queries.append
            };
            let mut query = sqlx::query_as::<_, OutcomeRow>(AssertSqlSafe(Arc::clone(sql)))
                .bind(request.stream_type.as_ref())
                .bind(request.stream_id.as_str())
                .bind(append.expected)
                .bind(&event_ids)
                .bind(&event_types)
                .bind(&append.schema_versions)
                .bind(&payloads)
                .bind(&metadata);
            if !plain {
                query = query
                    .bind(request.command_id)
                    .bind(notify_in_statement.then_some(self.channel()));
            }
            let row = match self.command_connection().await {
                Err(error) => Err(error),
                Ok(lease) if !self.inner.inline.has_handlers() => {
                    let mut lease = lease;
                    let row = match lease.conn() {
                        Ok(conn) => query.fetch_optional(conn).await,
                        Err(error) => Err(error),
                    };
                    lease.release(&row);
                    row
                }
                Ok(lease) => crate::inline::append(self, lease, request, query).await?,
            };
            match row {
                // The connection failed with the append in flight: whether it committed
                // is unknown. Sent again, with the same event ids and expected version, at
                // most one of the two can commit; if the first did, the second runs into
                // it on the log's keys, and it is found by its events.
                Err(error) if !sent_again && connection_lost(&error) => {
                    warn!(%error, "the append's connection failed; sending the append again");
                    self.inner.commands.check_idle_before_use();
                    sent_again = true;
                }
                Ok(Some(row)) => break row.into_outcome().map_err(Into::into),
                Ok(None) => break Err(conflict(request)),
                Err(error) => break self.append_failed(request, &event_ids, error).await,
            }
        };
        match result {
            Err(error)
                if sent_again
                    && (error.is_conflict()
                        || matches!(error, cqrs_core::Error::DuplicateEventId { .. })) =>
            {
                self.find_appended(request, &event_ids).await?.ok_or(error)
            }
            // The command id's original may be this append's own first attempt.
            Ok(outcome) if sent_again && outcome.duplicate => Ok(self
                .find_appended(request, &event_ids)
                .await?
                .filter(|ours| ours.position == outcome.position)
                .unwrap_or(outcome)),
            other => other,
        }
    }

    /// The outcome of `request`, if all of its events are in the log where it put them:
    /// after an append sent again found the first attempt had committed.
    async fn find_appended(
        &self,
        request: &AppendRequest,
        event_ids: &[Uuid],
    ) -> cqrs_core::Result<Option<AppendOutcome>> {
        log_statement(Statement::FindAppended);
        let found: Option<(i64, i64, i64, i64, i64)> =
            sqlx::query_as(AssertSqlSafe(Arc::clone(&self.inner.queries.find_appended)))
                .bind(request.stream_type.as_ref())
                .bind(request.stream_id.as_str())
                .bind(event_ids)
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(|e| Error::database(Statement::FindAppended, e))?;
        let Some((first_version, stream_version, transaction_id, sequence, count)) = found else {
            return Ok(None);
        };
        let outcome = AppendOutcome {
            first_version: to_u64("first_version", first_version)?,
            stream_version: to_u64("stream_version", stream_version)?,
            position: position(transaction_id, sequence)?,
            duplicate: false,
        };
        let all_there = usize::try_from(count).is_ok_and(|count| count == event_ids.len())
            && request.expected_version.checked_add(1) == Some(outcome.first_version);
        Ok(all_there.then_some(outcome))
    }

    /// Turns a failed append into the typed error its constraint stands for, or into the
    /// original outcome when it lost a race against the same command id.
    async fn append_failed(
        &self,
        request: &AppendRequest,
        event_ids: &[Uuid],
        error: sqlx::Error,
    ) -> cqrs_core::Result<AppendOutcome> {
        if let Some(projection) = self.inline_sql_failure(&error) {
            return Err(PgProjectionError::InlineSql {
                projection,
                source: error,
            }
            .into());
        }
        let constraint = match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                db.constraint().map(str::to_owned)
            }
            _ => None,
        };
        let Some(constraint) = constraint else {
            return Err(Error::database(Statement::Append, error).into());
        };
        // A unique violation is only raised once the competing transaction has
        // committed, so a new statement sees what it wrote.
        if let Some(command_id) = request.command_id
            && (constraint == COMMAND_ID_KEY || constraint == STREAM_VERSION_KEY)
            && let Some(original) = self.find_command(command_id).await?
        {
            return Ok(original);
        }
        Err(match constraint.as_str() {
            STREAM_VERSION_KEY => conflict(request),
            EVENT_ID_KEY => match self.find_event_id(event_ids).await? {
                Some(event_id) => cqrs_core::Error::DuplicateEventId { event_id },
                None => Error::database(Statement::Append, error).into(),
            },
            _ => Error::database(Statement::Append, error).into(),
        })
    }

    /// The names of the store's inline SQL projections, when `error` came from their part
    /// of the append statement: an error in the data, or a constraint or rule broken
    /// outside the log's own tables (which only their statements write).
    fn inline_sql_failure(&self, error: &sqlx::Error) -> Option<String> {
        let names = self.inner.inline.statement_names()?;
        let sqlx::Error::Database(db) = error else {
            return None;
        };
        let db = db.try_downcast_ref::<PgDatabaseError>()?;
        let on_the_log =
            db.schema() == Some(self.schema()) && matches!(db.table(), Some("events" | "commands"));
        // Cardinality, data, integrity, invalid cursor, function, syntax or access, check
        // option and PL/pgSQL errors: what a statement's own logic and data raise.
        let raised_by_a_statement = matches!(
            db.code().get(..2),
            Some("21" | "22" | "23" | "27" | "2F" | "38" | "39" | "42" | "44" | "P0")
        );
        (raised_by_a_statement && !on_the_log).then_some(names)
    }

    async fn find_event_id(&self, event_ids: &[Uuid]) -> cqrs_core::Result<Option<Uuid>> {
        log_statement(Statement::FindEventId);
        sqlx::query_scalar::<_, Uuid>(AssertSqlSafe(Arc::clone(&self.inner.queries.find_event_id)))
            .bind(event_ids)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| Error::database(Statement::FindEventId, e).into())
    }
}

/// An append checked and converted for the server: what its statement binds besides the
/// request's own fields.
pub(crate) struct Prepared {
    pub(crate) request: AppendRequest,
    /// The expected version as a bigint.
    pub(crate) expected: i64,
    /// The events' schema versions as integers.
    pub(crate) schema_versions: Vec<i32>,
}

impl Prepared {
    /// `request` with its numbers converted; an error for one the columns cannot hold.
    pub(crate) fn new(request: AppendRequest) -> cqrs_core::Result<Self> {
        let expected = i64::try_from(request.expected_version)
            .map_err(|_| invalid(&request, "the expected version does not fit a bigint"))?;
        let schema_versions = request
            .events
            .iter()
            .map(|event| i32::try_from(event.schema_version))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| invalid(&request, "a schema version does not fit an integer"))?;
        Ok(Self {
            request,
            expected,
            schema_versions,
        })
    }
}

fn invalid(request: &AppendRequest, reason: &'static str) -> cqrs_core::Error {
    cqrs_core::Error::InvalidAppend {
        stream_type: request.stream_type.clone().into_owned(),
        stream_id: request.stream_id.clone(),
        reason,
    }
}

pub(crate) fn conflict(request: &AppendRequest) -> cqrs_core::Error {
    cqrs_core::Error::Conflict {
        stream_type: request.stream_type.clone().into_owned(),
        stream_id: request.stream_id.clone(),
        expected: request.expected_version,
    }
}

pub(crate) fn log_statement(statement: Statement) {
    trace!(target: "cqrs_postgres::query", { db.statement = statement.name() }, "running statement");
}

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
        log_statement(Statement::Load);
        let rows =
            sqlx::query_as::<_, EventRow>(AssertSqlSafe(Arc::clone(&self.inner.queries.load)))
                .bind(stream_type)
                .bind(stream_id)
                .bind(to_i64_saturating(after_version))
                .fetch_all(&self.inner.pool)
                .await
                .map_err(|e| Error::database(Statement::Load, e))?;
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
        // A state version past i32::MAX cannot be stored, so no snapshot matches it.
        let wanted = i32::try_from(state_version).unwrap_or(-1);
        let mut sent_again = false;
        let rows = loop {
            log_statement(Statement::LoadForCommand);
            let query = sqlx::query_as::<_, ReplayRow>(AssertSqlSafe(Arc::clone(
                &self.inner.queries.load_for_command,
            )))
            .bind(stream_type)
            .bind(stream_id)
            .bind(wanted);
            let mut lease = self
                .command_connection()
                .await
                .map_err(|e| Error::database(Statement::LoadForCommand, e))?;
            let rows = match lease.conn() {
                Ok(conn) => query.fetch_all(conn).await,
                Err(error) => Err(error),
            };
            lease.release(&rows);
            match rows {
                // A read: sent again on another connection.
                Err(error) if !sent_again && connection_lost(&error) => {
                    warn!(%error, "a command's load lost its connection; loading again");
                    self.inner.commands.check_idle_before_use();
                    sent_again = true;
                }
                other => break other.map_err(|e| Error::database(Statement::LoadForCommand, e))?,
            }
        };
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
                    return Err(Error::database(
                        Statement::LoadForCommand,
                        sqlx::Error::Protocol(format!(
                            "version {stream_version} came back as neither an event nor a snapshot"
                        )),
                    )
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
        request.validate()?;
        self.append_once(request).await
    }

    #[tracing::instrument(
        level = "debug",
        name = "cqrs_postgres.find_command",
        skip_all,
        fields(command_id = %command_id),
        err
    )]
    async fn find_command(&self, command_id: Uuid) -> cqrs_core::Result<Option<AppendOutcome>> {
        log_statement(Statement::FindCommand);
        let row = sqlx::query_as::<_, OutcomeRow>(AssertSqlSafe(Arc::clone(
            &self.inner.queries.find_command,
        )))
        .bind(command_id)
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(|e| Error::database(Statement::FindCommand, e))?;
        match row {
            None => Ok(None),
            Some(row) => Ok(Some(AppendOutcome {
                duplicate: true,
                ..row.into_outcome()?
            })),
        }
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
        log_statement(Statement::ReadAll);
        let rows =
            sqlx::query_as::<_, LogRow>(AssertSqlSafe(Arc::clone(&self.inner.queries.read_all)))
                .bind(to_i64_saturating(after.commit()))
                .bind(to_i64_saturating(after.sequence()))
                .bind(&stream_types)
                .bind(&event_types)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.inner.pool)
                .await
                .map_err(|e| Error::database(Statement::ReadAll, e))?;
        rows.into_iter().map(LogRow::into_recorded).collect()
    }

    #[tracing::instrument(level = "debug", name = "cqrs_postgres.head", skip_all, err)]
    async fn head(&self) -> cqrs_core::Result<Position> {
        log_statement(Statement::Head);
        let row =
            sqlx::query_as::<_, PositionRow>(AssertSqlSafe(Arc::clone(&self.inner.queries.head)))
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(|e| Error::database(Statement::Head, e))?;
        match row {
            None => Ok(Position::START),
            Some(row) => Ok(crate::rows::position(row.transaction_id, row.sequence)?),
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
        log_statement(Statement::LoadSnapshot);
        let row = sqlx::query_as::<_, SnapshotRow>(AssertSqlSafe(Arc::clone(
            &self.inner.queries.load_snapshot,
        )))
        .bind(stream_type)
        .bind(stream_id)
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(|e| Error::database(Statement::LoadSnapshot, e))?;
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
        let invalid = |reason| cqrs_core::Error::InvalidAppend {
            stream_type: snapshot.stream_type.clone(),
            stream_id: snapshot.stream_id.clone(),
            reason,
        };
        let stream_version = i64::try_from(snapshot.stream_version)
            .map_err(|_| invalid("the snapshot's stream version does not fit a bigint"))?;
        let state_version = i32::try_from(snapshot.state_version)
            .map_err(|_| invalid("the snapshot's state version does not fit an integer"))?;
        log_statement(Statement::SaveSnapshot);
        sqlx::query(AssertSqlSafe(Arc::clone(&self.inner.queries.save_snapshot)))
            .bind(&snapshot.stream_type)
            .bind(&snapshot.stream_id)
            .bind(stream_version)
            .bind(state_version)
            .bind(Json(&snapshot.state))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| Error::database(Statement::SaveSnapshot, e))?;
        Ok(())
    }
}
