//! The store wing: [`PgEventStore`], the write path and the reads of the
//! [`EventStore`](cqrs_core::EventStore) contract. It builds on the database wing; the
//! projection wing builds on it.
//!
//! - `builder`: configuration, validated once, and the store's parts made from it;
//! - `append`: the write path, from a request to its outcome, including a resend after a
//!   lost connection (`resend`) and the appends sent together (`batch` queues them,
//!   `together` sends them);
//! - `prepared`: an append converted for the statements;
//! - `connections`: the connections the store keeps for commands;
//! - `notify`: the `NOTIFY` after commits;
//! - `inline`, `inline_sql`: views kept inside the append's transaction or statement;
//! - `read`: the reads of the log, streams and snapshots.

mod append;
mod atomic;
mod batch;
mod builder;
mod connections;
mod inline;
mod inline_sql;
mod notify;
mod prepared;
mod read;
mod resend;
mod together;

pub(crate) use inline::{BoxFuture, InlineHandler};

use std::sync::Arc;

use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};
use tracing::Instrument;

pub use builder::{PgEventStoreBuilder, PgStoreTuning};
pub use inline_sql::PgInlineSql;
pub use notify::PgNotify;

use self::batch::Batcher;
use self::connections::Check;
use self::connections::CommandConnections;
use self::inline::Inline;
use self::notify::Notifier;
use crate::db::{Error, MIGRATOR, Projections, Result, SchemaName, Sql, Statement, Statements};

/// The schema a store uses unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "cqrs";

/// The PostgreSQL event store: an [`EventStore`](cqrs_core::EventStore) on a
/// [`sqlx::PgPool`].
///
/// All its tables live in one PostgreSQL schema (`cqrs` unless set with
/// [`PgEventStoreBuilder::schema`]), so several applications, or parallel tests, can
/// share a database. Create the tables with [`migrate`](Self::migrate).
///
/// - **Append** is one statement for any number of events, checked against the stream's
///   expected version (a lost race is [`cqrs_core::Error::Conflict`]), recording its
///   command id, and announced with `NOTIFY` (see [`PgNotify`]). Appends waiting at the
///   same time go out as one statement, each with its own outcome.
/// - **Load for a command** fetches the snapshot and the events after it in one
///   statement.
/// - **The global log** is read in commit-safe order: a reader that remembers its
///   position never skips an event that commits late (see the guide's PostgreSQL page
///   for why).
///
/// Clones are cheap handles to the same store. How the store spends connections and
/// statements, and the knobs of [`PgStoreTuning`], are in the guide's performance page.
///
/// ```no_run
/// use cqrs_core::EventStore;
/// use cqrs_core::store::{AppendRequest, NewEvent};
/// use cqrs_postgres::PgEventStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::PgPool::connect("postgres://postgres@localhost/app").await?;
/// let store = PgEventStore::builder(pool).schema("billing").build()?;
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

impl Inner {
    fn projections(&self) -> Projections {
        Projections::new(Arc::clone(&self.statements), &self.schema)
    }

    /// The rows of the read `statement` (its parameters bound by `bind`), on the store's
    /// command connections: a read whose connection failed (a server restarted, a session
    /// ended) is sent once more on a connection checked first, so the caller never sees
    /// a connection the store could have replaced.
    async fn read<T>(
        &self,
        statement: Statement,
        bind: impl Fn(Sql) -> Sql,
    ) -> cqrs_core::Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        self.commands
            .read(&self.pool, Check::IfIdle, || {
                bind(self.statements.get(statement))
            })
            .await
            .map_err(|source| Error::database(statement.name(), source).into())
    }
}

/// The parts of a store, made once by [`PgEventStoreBuilder::build`].
#[derive(Debug)]
struct Inner {
    pool: PgPool,
    schema: SchemaName,
    /// The channel appends are announced on.
    channel: String,
    statements: Arc<Statements>,
    notify: PgNotify,
    notifier: Notifier,
    inline: Inline,
    commands: CommandConnections,
    batcher: Batcher,
    tuning: PgStoreTuning,
}

impl PgEventStore {
    /// A store on `pool`, in the schema `cqrs`, with the default settings: the same as
    /// `PgEventStore::builder(pool).build()`.
    ///
    /// sqlx pools ping a connection before handing it out unless built with
    /// `test_before_acquire(false)`, a round trip per use: turn that off for pools
    /// dedicated to the store ([`connect`](Self::connect) does).
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self::from_parts(builder::Parts::defaults(pool))
    }

    /// A store on `pool`, to configure: see [`PgEventStoreBuilder`].
    pub fn builder(pool: PgPool) -> PgEventStoreBuilder {
        PgEventStoreBuilder::new(pool)
    }

    /// A builder holding this store's configuration, to build a store that differs in
    /// some of it (on the same pool, with connections and notifications of its own).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use cqrs_postgres::{PgEventStore, PgStoreTuning};
    ///
    /// let pool = sqlx::PgPool::connect_lazy("postgres://postgres@localhost/app")?;
    /// let store = PgEventStore::builder(pool).schema("shop").build()?;
    /// let one_by_one = store
    ///     .to_builder()
    ///     .tuning(PgStoreTuning::default().append_batches(0))
    ///     .build()?;
    /// assert_eq!(one_by_one.schema(), "shop");
    /// assert_eq!(one_by_one.tuning().append_batches, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn to_builder(&self) -> PgEventStoreBuilder {
        PgEventStoreBuilder::from_store(
            self.inner.pool.clone(),
            &self.inner.schema,
            self.inner.notify,
            &self.inner.inline,
            self.inner.tuning,
        )
    }

    /// Connects a pool of up to 10 connections to `url` and makes a store on it with the
    /// default settings. The pool does not ping connections before use.
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

    fn from_parts(parts: builder::Parts) -> Self {
        Self {
            inner: Arc::new(parts.into_inner()),
        }
    }

    /// How the store announces appends.
    #[must_use]
    pub fn notify(&self) -> PgNotify {
        self.inner.notify
    }

    /// The store's tuning.
    #[must_use]
    pub fn tuning(&self) -> PgStoreTuning {
        self.inner.tuning
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

    /// The `NOTIFY` channel appends are announced on (see [`PgNotify`]). Its name and
    /// payload are the store's own business: the projection runner listens to it.
    #[doc(hidden)]
    #[must_use]
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Opens a transaction on the store's pool in which unqualified names resolve in the
    /// store's schema first (its `search_path` is set for the transaction only): the
    /// setting every view's SQL runs in, under a runner and inline. For SQL of your own
    /// next to the views, such as creating their tables before a runner starts.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = cqrs_postgres::PgEventStore::connect("postgres://postgres@localhost/app").await?;
    /// let mut tx = store.begin_in_schema().await?;
    /// // Lands in the store's schema (`cqrs` by default), not in `public`.
    /// sqlx::query("CREATE TABLE IF NOT EXISTS totals (id text PRIMARY KEY, n bigint)")
    ///     .execute(&mut *tx)
    ///     .await?;
    /// tx.commit().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when no connection can be had or the server refuses.
    pub async fn begin_in_schema(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.inner
            .pool
            .begin_with(AssertSqlSafe(self.begin_view_transaction(true)))
            .await
            .map_err(|e| Error::database("begin", e))
    }

    /// The statement that opens a view's transaction in this store's schema (for the
    /// projection wing).
    pub(crate) fn begin_view_transaction(&self, synchronous_commit: bool) -> String {
        self.inner.schema.begin_view_transaction(synchronous_commit)
    }

    /// The projections table of this store (for the projection wing).
    pub(crate) fn projections(&self) -> Projections {
        self.inner.projections()
    }

    /// Creates the schema if needed and applies the store's migrations
    /// ([`MIGRATOR`]) inside it, tracked in its own `_cqrs_migrations` table. Safe to
    /// call from several processes at once: sqlx serialises migrators with an advisory
    /// lock.
    ///
    /// Nothing runs this implicitly: call it at deployment or at startup. It also
    /// registers the store's inline projections (see
    /// [`register_inline`](Self::register_inline)).
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
                .map_err(|e| Error::database("migrate", e))?
                .detach();
            let result = self.migrate_on(&mut conn).await;
            if let Err(error) = sqlx::Connection::close(conn).await {
                tracing::debug!(%error, "closing the migration connection failed");
            }
            result?;
            self.register_inline().await
        }
        .instrument(span)
        .await
    }

    /// Registers the store's inline projections ([`inline`](PgEventStoreBuilder::inline),
    /// [`inline_sql`](PgEventStoreBuilder::inline_sql)): checks each inline SQL statement
    /// with the server and writes their rows in the projections table, so that
    /// [`PgProjectionRunner::status`](crate::PgProjectionRunner::status) reports them and
    /// a wait on them returns at once. Done once per store, and up front by
    /// [`migrate`](Self::migrate) and by
    /// [`PgProjectionRunnerBuilder::start`](crate::PgProjectionRunnerBuilder::start);
    /// otherwise the store's first append does it. Nothing to do for a store without
    /// inline projections.
    ///
    /// # Errors
    ///
    /// [`Error::InlineSql`] when the server refuses an inline SQL statement;
    /// [`Error::Database`] when writing the rows fails (for example before the
    /// migrations).
    pub async fn register_inline(&self) -> Result<()> {
        let inner = &self.inner;
        inner
            .inline
            .register(&inner.pool, &inner.schema, &inner.projections())
            .await
    }

    async fn migrate_on(&self, conn: &mut sqlx::PgConnection) -> Result<()> {
        let quoted = self.inner.schema.quoted();
        let create = Sql::new(
            "migrate",
            AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {quoted}")),
        );
        match create.try_execute(&mut *conn).await {
            Ok(_) => {}
            // Two processes creating the schema at once: the other one won, which is fine.
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {}
            Err(error) => return Err(Error::database("migrate", error)),
        }
        Sql::new("migrate", "SELECT set_config('search_path', $1, false)")
            .bind(&quoted)
            .execute(&mut *conn)
            .await?;
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
}
