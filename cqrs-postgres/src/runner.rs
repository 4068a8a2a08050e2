//! The projection runner: many projections per process, one owner per projection across
//! processes, checkpoints committed with the views.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cqrs_core::{EventFilter, Position, Projection};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, warn};

use crate::PgEventStore;
use crate::checkpoints::{self, Control, ProjectionQueries};
use crate::listener::Hub;
use crate::projection_error::PgProjectionError;
use crate::schema::SchemaName;
use crate::status::PgProjectionStatus;
use crate::view::{PgView, Plain};
use crate::worker;

/// Settings shared by the workers of one runner.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) batch_size: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) claim_interval: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Duration,
    pub(crate) synchronous_commit: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            poll_interval: Duration::from_millis(500),
            claim_interval: Duration::from_secs(1),
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            synchronous_commit: false,
        }
    }
}

/// What the workers of one runner share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pool: PgPool,
    pub(crate) queries: ProjectionQueries,
    pub(crate) hub: Arc<Hub>,
    pub(crate) owner: String,
    pub(crate) config: Config,
    pub(crate) shutdown: watch::Receiver<bool>,
}

type Spawn = Box<dyn FnOnce(Arc<Shared>, watch::Receiver<bool>) -> JoinHandle<()> + Send>;

/// A projection waiting for [`PgProjectionRunnerBuilder::start`].
struct Registration {
    name: &'static str,
    version: u32,
    filter: EventFilter,
    spawn: Spawn,
}

/// Options and projections of a [`PgProjectionRunner`]; made by
/// [`PgProjectionRunner::builder`].
pub struct PgProjectionRunnerBuilder {
    store: PgEventStore,
    config: Config,
    owner: Option<String>,
    registrations: Vec<Registration>,
}

impl fmt::Debug for PgProjectionRunnerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgProjectionRunnerBuilder")
            .field("schema", &self.store.schema())
            .field("config", &self.config)
            .field("owner", &self.owner)
            .field(
                "projections",
                &self
                    .registrations
                    .iter()
                    .map(|r| (r.name, r.version))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PgProjectionRunnerBuilder {
    /// Adds a projection whose handler writes its view through the transaction it is
    /// given (`Context = PgConnection`).
    ///
    /// It gets no hooks: a [`rebuild`](PgProjectionRunner::rebuild) replays the log over
    /// the view as it is, which suits handlers that overwrite rows but double-counts
    /// handlers that add to them. Implement [`PgView`] and register with
    /// [`view`](Self::view) to empty the view first, create tables, or buffer writes.
    #[must_use]
    pub fn projection<P>(self, projection: P) -> Self
    where
        P: Projection<Context = PgConnection>,
    {
        self.view(Plain(projection))
    }

    /// Adds a projection with [`PgView`] hooks.
    #[must_use]
    pub fn view<V: PgView>(mut self, view: V) -> Self {
        self.registrations.push(Registration {
            name: V::NAME,
            version: V::VERSION,
            filter: V::filter(),
            spawn: Box::new(move |shared, owned| worker::spawn(view, shared, owned)),
        });
        self
    }

    /// How this process is named in the projections' `owner` column and in
    /// [`PgProjectionStatus::owner`]. Default: `pid-<process id>-<random>`.
    #[must_use]
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// How many events one transaction applies at most (default 1000).
    #[must_use]
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.config.batch_size = batch_size.max(1);
        self
    }

    /// How often a projection looks at the log when no notification arrives (default
    /// 500 ms). This bounds the delay a lost notification can cause.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How often the runner tries to take ownership of the projections other processes
    /// do not hold, and checks that its lock connection is alive (default 1 s). A
    /// projection whose owner died is taken over within about this interval.
    #[must_use]
    pub fn claim_interval(mut self, interval: Duration) -> Self {
        self.config.claim_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How many times a failing event is tried before the projection stops (default 5),
    /// and the delay before the first retry (default 100 ms), doubled at each retry.
    #[must_use]
    pub fn retries(mut self, max_attempts: u32, backoff: Duration) -> Self {
        self.config.max_attempts = max_attempts.max(1);
        self.config.backoff = backoff;
        self
    }

    /// Whether a batch's commit waits for its WAL flush (default `false`).
    ///
    /// It need not for exactly-once: a view's changes and its checkpoint commit
    /// together, so a server crash that loses a batch's commit loses both, and the worker
    /// applies the batch again from the older checkpoint. The log itself stays durable:
    /// appends are not affected. What a crash can do without the flush is take a view
    /// back, for a moment, behind what a reader already saw (after
    /// [`wait_for`](PgProjectionRunner::wait_for)), until the batch is applied again.
    /// Set it to `true` to rule that out, at the cost of one WAL flush per batch.
    #[must_use]
    pub fn synchronous_commit(mut self, synchronous: bool) -> Self {
        self.config.synchronous_commit = synchronous;
        self
    }

    /// Registers the projections and starts the runner: the listener, the lock
    /// connection, and one task per projection, which applies batches while this process
    /// owns the projection.
    ///
    /// # Errors
    ///
    /// [`cqrs_core::Error::Backend`] with a [`PgProjectionError`]: `Duplicate` when two
    /// projections share a name and version, `Database` when registering fails (for
    /// example when the store's migrations have not been applied).
    pub async fn start(self) -> cqrs_core::Result<PgProjectionRunner> {
        let Self {
            store,
            config,
            owner,
            registrations,
        } = self;
        let mut seen = HashSet::new();
        for registration in &registrations {
            if !seen.insert((registration.name, registration.version)) {
                return Err(PgProjectionError::Duplicate {
                    name: registration.name,
                    version: registration.version,
                }
                .into());
            }
        }
        let schema = SchemaName::parse(store.schema())?;
        let queries = ProjectionQueries::new(&schema);
        let pool = store.pool().clone();
        let mut keys = Vec::with_capacity(registrations.len());
        {
            let mut conn = pool
                .acquire()
                .await
                .map_err(|e| PgProjectionError::database("acquire", e))?;
            for registration in &registrations {
                let key = checkpoints::register(
                    &mut conn,
                    &queries,
                    registration.name,
                    registration.version,
                    &registration.filter,
                    false,
                )
                .await?;
                keys.push(key);
            }
        }
        let owner = owner.unwrap_or_else(|| {
            let random = uuid::Uuid::new_v4().simple().to_string();
            format!("pid-{}-{}", std::process::id(), &random[..8])
        });
        let (shutdown_tx, shutdown) = watch::channel(false);
        let hub = Arc::new(Hub::new());
        let options: PgConnectOptions = (*pool.connect_options()).clone();
        let listener = tokio::spawn(
            Arc::clone(&hub)
                .listen(
                    options
                        .clone()
                        .application_name(&format!("cqrs-listen {owner}")),
                    store.channel().to_owned(),
                    queries.channel.clone(),
                    shutdown.clone(),
                )
                .instrument(tracing::debug_span!("cqrs_postgres.projection.listener")),
        );
        let shared = Arc::new(Shared {
            pool,
            queries,
            hub,
            owner: owner.clone(),
            config: config.clone(),
            shutdown: shutdown.clone(),
        });
        let mut slots = Vec::with_capacity(registrations.len());
        for (registration, key) in registrations.into_iter().zip(keys) {
            let (owned, owned_rx) = watch::channel(false);
            let task = (registration.spawn)(Arc::clone(&shared), owned_rx);
            slots.push(Slot {
                name: registration.name,
                version: registration.version,
                key,
                owned,
                task,
            });
        }
        let supervisor = tokio::spawn(
            supervise(
                slots,
                options.application_name(&format!("cqrs-owner {owner}")),
                config.claim_interval,
                shutdown,
            )
            .instrument(tracing::info_span!("cqrs_postgres.projection.owner", owner = %owner)),
        );
        info!(owner = %owner, schema = %store.schema(), "projection runner started");
        Ok(PgProjectionRunner {
            inner: Arc::new(Inner {
                shared,
                shutdown: shutdown_tx,
                tasks: Mutex::new(Some(Tasks {
                    listener,
                    supervisor,
                })),
            }),
        })
    }
}

/// A projection as the supervisor sees it.
struct Slot {
    name: &'static str,
    version: u32,
    key: i64,
    owned: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Holds the session advisory locks that make this process the owner of projections:
/// tries to take the ones nobody holds, notices when its connection dies (and with it
/// the locks), and tells the workers.
async fn supervise(
    mut slots: Vec<Slot>,
    options: PgConnectOptions,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn: Option<PgConnection> = None;
    let mut backoff = interval;
    loop {
        if *shutdown.borrow() {
            break;
        }
        if conn.is_none() {
            match PgConnection::connect_with(&options).await {
                Ok(connected) => {
                    debug!("lock connection open");
                    conn = Some(connected);
                    backoff = interval;
                }
                Err(error) => {
                    warn!(%error, "cannot open the lock connection");
                    backoff = (backoff * 2).min(Duration::from_secs(5)).max(interval);
                }
            }
        }
        if let Some(connected) = conn.as_mut()
            && let Err(error) = claim_round(connected, &mut slots).await
        {
            warn!(%error, "lock connection lost; giving up every projection");
            for slot in &slots {
                slot.owned.send_replace(false);
            }
            conn = None;
        }
        let pause = if conn.is_some() { interval } else { backoff };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {}
        }
    }
    // Stop the workers before giving up the locks, so no other process starts while
    // one of ours still writes.
    for slot in &slots {
        slot.owned.send_replace(false);
    }
    for slot in &mut slots {
        if tokio::time::timeout(Duration::from_secs(10), &mut slot.task)
            .await
            .is_err()
        {
            slot.task.abort();
        }
    }
    if let Some(mut connected) = conn {
        if let Err(error) = sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut connected)
            .await
        {
            debug!(%error, "releasing the locks failed; closing the connection releases them");
        }
        if let Err(error) = connected.close().await {
            debug!(%error, "closing the lock connection failed");
        }
    }
}

/// One round: give up projections whose worker ended, try to take the free ones. Also
/// proves the connection (and so the locks) alive.
async fn claim_round(conn: &mut PgConnection, slots: &mut [Slot]) -> Result<(), sqlx::Error> {
    for slot in slots.iter() {
        if slot.task.is_finished() && *slot.owned.borrow() {
            warn!(
                projection = slot.name,
                "projection task ended; releasing it"
            );
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(slot.key)
                .execute(&mut *conn)
                .await?;
            slot.owned.send_replace(false);
        }
    }
    let wanted: Vec<i64> = slots
        .iter()
        .filter(|slot| !*slot.owned.borrow() && !slot.task.is_finished())
        .map(|slot| slot.key)
        .collect();
    let taken: Vec<(i64, bool)> = sqlx::query_as(
        "SELECT key, pg_try_advisory_lock(key) FROM unnest($1::bigint[]) AS t (key)",
    )
    .bind(&wanted)
    .fetch_all(&mut *conn)
    .await?;
    for (key, got) in taken {
        if !got {
            continue;
        }
        for slot in slots.iter().filter(|slot| slot.key == key) {
            info!(
                projection = slot.name,
                version = slot.version,
                "took ownership"
            );
            slot.owned.send_replace(true);
        }
    }
    Ok(())
}

struct Tasks {
    listener: JoinHandle<()>,
    supervisor: JoinHandle<()>,
}

struct Inner {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Option<Tasks>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        let tasks = self
            .tasks
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(tasks) = tasks {
            // The supervisor stops the workers and releases the locks on its own.
            drop(tasks.supervisor);
            tasks.listener.abort();
        }
    }
}

/// Runs projections of a [`PgEventStore`]'s log into PostgreSQL views, exactly once,
/// in any number of processes.
///
/// - **Exactly once.** Each batch is one transaction: the handlers write the view
///   through the transaction they are given, and the projection's checkpoint row moves
///   in the same transaction, guarded by the position the batch started from. A crash
///   at any point commits all of a batch or none of it.
/// - **Never skips.** Batches come from the store's commit-safe log, filtered in SQL to
///   the projection's event types.
/// - **Live.** Every append is announced with `NOTIFY`; a projection wakes up at once,
///   and polls every [`poll_interval`](PgProjectionRunnerBuilder::poll_interval) in case
///   a notification was lost.
/// - **One owner.** Any number of processes may run the same projections. Each holds a
///   session advisory lock per projection it owns, on a connection of its own; when a
///   process dies, PostgreSQL releases its locks and another process takes over within
///   the [`claim_interval`](PgProjectionRunnerBuilder::claim_interval).
/// - **Failures.** A failing handler is retried with a growing delay, then the
///   projection stops at that event, with the error recorded in its row and shown by
///   [`status`](Self::status); the other projections keep running. Resume with
///   [`retry`](Self::retry) or [`skip`](Self::skip).
/// - **Rebuilds.** [`rebuild`](Self::rebuild) resets a view and replays the log. A new
///   [`VERSION`](Projection::VERSION) of a projection is built beside the served one and
///   replaces it once caught up (see [`PgView`]).
/// - **Read your writes.** [`wait_for`](Self::wait_for) returns once a projection has
///   passed a command's position token.
///
/// Clones are cheap handles to the same runner. Dropping the last one stops it;
/// [`shutdown`](Self::shutdown) stops it and waits.
///
/// ```no_run
/// use std::time::Duration;
///
/// use cqrs_core::{AppendRequest, EventEnvelope, EventStore, NewEvent, Projection};
/// use cqrs_postgres::{PgEventStore, PgProjectionRunner};
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
/// /// `balances(account text PRIMARY KEY, balance bigint)`
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
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PgEventStore::connect("postgres://postgres@localhost/app").await?;
/// store.migrate().await?;
/// let runner = PgProjectionRunner::builder(store.clone())
///     .projection(Balances)
///     .start()
///     .await?;
///
/// let deposit = NewEvent::new("Deposited", 1, serde_json::json!({ "amount": 5 }));
/// let outcome = store
///     .append(AppendRequest::new("account", "a-1", 0, vec![deposit]))
///     .await?;
/// // read your write
/// runner
///     .wait_for("balances", outcome.position, Duration::from_secs(5))
///     .await?;
/// for status in runner.status().await? {
///     println!("{} v{}: {} at {}", status.name, status.version, status.state, status.position);
/// }
/// runner.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PgProjectionRunner {
    inner: Arc<Inner>,
}

impl fmt::Debug for PgProjectionRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgProjectionRunner")
            .field("owner", &self.inner.shared.owner)
            .field("config", &self.inner.shared.config)
            .finish_non_exhaustive()
    }
}

impl PgProjectionRunner {
    /// A runner on `store`'s pool and schema. Add projections, then
    /// [`start`](PgProjectionRunnerBuilder::start) it.
    ///
    /// Besides the pool's connections (one per batch in flight), a runner holds two of its
    /// own: one listening for notifications, one holding the ownership locks. A runner
    /// with no projection is fine for processes that only wait for, or report on,
    /// projections run elsewhere.
    #[must_use]
    pub fn builder(store: PgEventStore) -> PgProjectionRunnerBuilder {
        PgProjectionRunnerBuilder {
            store,
            config: Config::default(),
            owner: None,
            registrations: Vec::new(),
        }
    }

    /// This runner's owner name.
    #[must_use]
    pub fn owner(&self) -> &str {
        &self.inner.shared.owner
    }

    /// The `NOTIFY` channel checkpoints are announced on (`<schema>_proj`). After each
    /// commit the payload is `c<TAB>name<TAB>version<TAB>served<TAB>commit.sequence`,
    /// where `served` is `true` or `false`; failures and operator requests send
    /// `x<TAB>name<TAB>version`.
    #[must_use]
    pub fn channel(&self) -> &str {
        &self.inner.shared.queries.channel
    }

    /// The status of every projection version in the store's schema (also those run by
    /// other processes), ordered by name and version.
    ///
    /// # Errors
    ///
    /// [`cqrs_core::Error::Backend`] when the query fails.
    pub async fn status(&self) -> cqrs_core::Result<Vec<PgProjectionStatus>> {
        self.status_rows(None).await
    }

    /// The status of each version of the projection `name`.
    ///
    /// # Errors
    ///
    /// [`cqrs_core::Error::Backend`] when the query fails.
    pub async fn status_of(&self, name: &str) -> cqrs_core::Result<Vec<PgProjectionStatus>> {
        self.status_rows(Some(name)).await
    }

    async fn status_rows(&self, name: Option<&str>) -> cqrs_core::Result<Vec<PgProjectionStatus>> {
        let shared = &self.inner.shared;
        let rows = checkpoints::status(&shared.pool, &shared.queries, name).await?;
        rows.into_iter()
            .map(|row| PgProjectionStatus::from_row(row).map_err(Into::into))
            .collect()
    }

    /// Waits until the served version of the projection `name` has passed `position`
    /// (a command's position token): when it returns, a query of the view sees the write.
    /// Returns at once for an inline projection.
    ///
    /// Woken by the checkpoint notifications; it queries the checkpoint once at the start
    /// and again every poll interval or after the listener reconnected. A name no runner
    /// has registered yet counts as being at the start of the log.
    ///
    /// # Errors
    ///
    /// [`cqrs_core::Error::Timeout`] when the projection has not passed `position` within
    /// `timeout`; [`cqrs_core::Error::Backend`] when a query fails or the runner was shut
    /// down.
    #[tracing::instrument(
        level = "debug",
        name = "cqrs_postgres.projection.wait_for",
        skip_all,
        fields(projection = %name, position = %position),
        err
    )]
    pub async fn wait_for(
        &self,
        name: &str,
        position: Position,
        timeout: Duration,
    ) -> cqrs_core::Result<()> {
        let shared = &self.inner.shared;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut served = shared.hub.subscribe_served(name);
        let mut connections = shared.hub.subscribe_connections();
        let mut reached = Position::START;
        loop {
            served.borrow_and_update();
            connections.borrow_and_update();
            if let Some((checkpoint, inline)) =
                checkpoints::served_checkpoint(&shared.pool, &shared.queries, name).await?
            {
                if inline || checkpoint >= position {
                    return Ok(());
                }
                reached = checkpoint;
            }
            let poll = tokio::time::sleep(shared.config.poll_interval);
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    changed = served.changed() => {
                        if changed.is_err() {
                            return Err(PgProjectionError::ShutDown.into());
                        }
                        if let Some(announced) = *served.borrow_and_update() {
                            if announced >= position {
                                return Ok(());
                            }
                            reached = announced;
                        }
                    }
                    _ = connections.changed() => break,
                    () = &mut poll => break,
                    () = tokio::time::sleep_until(deadline) => {
                        return Err(cqrs_core::Error::Timeout {
                            projection: name.to_owned(),
                            target: position,
                            reached,
                        });
                    }
                }
            }
        }
    }

    /// Asks the owner of projection `name` at `version` to empty its view (with
    /// [`PgView::reset`]) and replay the log from the start. Its status is
    /// [`Rebuilding`](crate::ProjectionState::Rebuilding) until it has caught up; its
    /// view is partial meanwhile (a new [`VERSION`](Projection::VERSION) is the way to
    /// rebuild without readers seeing that). Returns `false` when there is no such
    /// projection.
    ///
    /// # Errors
    ///
    /// [`cqrs_core::Error::Backend`] when the update fails.
    pub async fn rebuild(&self, name: &str, version: u32) -> cqrs_core::Result<bool> {
        self.control(name, version, Control::Rebuild)
            .await
            .map(|position| position.is_some())
    }

    /// Resumes a failed projection at the event it failed on, with a fresh set of
    /// attempts. Returns `false` when it had not failed.
    ///
    /// # Errors
    ///
    /// [`cqrs_core::Error::Backend`] when the update fails.
    pub async fn retry(&self, name: &str, version: u32) -> cqrs_core::Result<bool> {
        self.control(name, version, Control::Retry)
            .await
            .map(|position| position.is_some())
    }

    /// Resumes a failed projection after the event it failed on, which it will never
    /// apply. Returns the skipped event's position, or `None` when it had not failed.
    ///
    /// # Errors
    ///
    /// [`cqrs_core::Error::Backend`] when the update fails.
    pub async fn skip(&self, name: &str, version: u32) -> cqrs_core::Result<Option<Position>> {
        self.control(name, version, Control::Skip).await
    }

    /// Forgets a version of projection `name` that is no longer served (after a
    /// blue/green switch): its row goes, so status stops reporting it. Its tables are
    /// yours to drop. Stop the processes that still run that version first, or they
    /// register it again. Returns `false` when there is no such version, or it is the
    /// served one.
    ///
    /// # Errors
    ///
    /// [`cqrs_core::Error::Backend`] when the delete fails.
    pub async fn retire(&self, name: &str, version: u32) -> cqrs_core::Result<bool> {
        let shared = &self.inner.shared;
        Ok(checkpoints::retire(&shared.pool, &shared.queries, name, version).await?)
    }

    async fn control(
        &self,
        name: &str,
        version: u32,
        request: Control,
    ) -> cqrs_core::Result<Option<Position>> {
        let shared = &self.inner.shared;
        let span = tracing::info_span!(
            "cqrs_postgres.projection.control",
            projection = %name,
            version,
            request = ?request
        );
        let position = checkpoints::control(&shared.pool, &shared.queries, name, version, request)
            .instrument(span)
            .await?;
        if let Some(position) = position {
            info!(projection = %name, version, request = ?request, %position, "operator request");
        }
        Ok(position)
    }

    /// Stops the runner: each projection finishes (or abandons) its batch, the locks are
    /// released so other processes take over at once, and the connections close.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(tasks) = tasks {
            if let Err(error) = tasks.supervisor.await {
                warn!(%error, "the ownership task ended abnormally");
            }
            if let Err(error) = tasks.listener.await {
                debug!(%error, "the listener task ended abnormally");
            }
        }
    }
}
