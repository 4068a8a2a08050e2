//! Configuring and starting a runner: [`PgProjectionRunnerBuilder`].

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cqrs_core::{EventFilter, Projection};
use sqlx::PgConnection;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, info};

use super::listener::Hub;
use super::ownership::{Slot, supervise};
use super::runner::{Inner, PgProjectionRunner, Tasks};
use super::shared::{Config, PgRunnerTuning, Shared};
use super::view::{PgView, Plain};
use super::worker;
use crate::db::{Error, Result, check_projection_name};
use crate::store::PgEventStore;

pub(crate) type Spawn =
    Box<dyn FnOnce(Arc<Shared>, watch::Receiver<bool>) -> JoinHandle<()> + Send>;

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
    pub fn view<V: PgView>(self, view: V) -> Self {
        self.register(
            V::NAME,
            V::VERSION,
            V::filter(),
            Box::new(move |shared, owned| worker::spawn(view, shared, owned)),
        )
    }

    /// Adds a projection run by the tasks `spawn` starts.
    pub(crate) fn register(
        mut self,
        name: &'static str,
        version: u32,
        filter: EventFilter,
        spawn: Spawn,
    ) -> Self {
        self.registrations.push(Registration {
            name,
            version,
            filter,
            spawn,
        });
        self
    }

    /// How this process is named in the projections' `owner` column and in
    /// [`PgProjectionStatus::owner`](crate::PgProjectionStatus::owner). Default: `pid-<process id>-<random>`.
    #[must_use]
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// How the runner spends connections, round trips and WAL flushes (see
    /// [`PgRunnerTuning`]).
    #[must_use]
    pub fn tuning(mut self, tuning: PgRunnerTuning) -> Self {
        self.config.tune(tuning);
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

    /// The longest delay between two tries of a failing event (default 30 s; at least
    /// 1 ms): the delay doubles from the `backoff` of [`retries`](Self::retries) up to
    /// this. A view that waits on something outside, like a relay on its broker, wants
    /// a short one: it goes on within this long after the broker is back.
    #[must_use]
    pub fn retry_ceiling(mut self, ceiling: Duration) -> Self {
        self.config.max_backoff = ceiling.max(Duration::from_millis(1));
        self
    }

    /// Registers the projections and starts the runner: the listener, the lock
    /// connection, and one task per projection, which applies batches while this process
    /// owns the projection.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for a projection name of more than 128 bytes, or holding
    /// whitespace or control characters; [`Error::DuplicateProjection`] when two
    /// projections share a name and version,
    /// [`Error::Database`] when registering fails (for example when the store's
    /// migrations have not been applied).
    pub async fn start(self) -> Result<PgProjectionRunner> {
        let Self {
            store,
            config,
            owner,
            registrations,
        } = self;
        let mut seen = HashSet::new();
        for registration in &registrations {
            check_projection_name(registration.name)?;
            if !seen.insert((registration.name, registration.version)) {
                return Err(Error::DuplicateProjection {
                    name: registration.name,
                    version: registration.version,
                });
            }
        }
        // The store's inline projections are reported by the runner too.
        store.register_inline().await?;
        let projections = store.projections();
        let pool = store.pool().clone();
        let mut keys = Vec::with_capacity(registrations.len());
        {
            let mut conn = pool
                .acquire()
                .await
                .map_err(|e| Error::database("acquire", e))?;
            // Owned copies: a reference to a registration (whose task maker need not be
            // `Sync`) held across an await would make this future not `Send`.
            let wanted: Vec<(&'static str, u32, EventFilter)> = registrations
                .iter()
                .map(|r| (r.name, r.version, r.filter.clone()))
                .collect();
            for (name, version, filter) in wanted {
                let key = projections
                    .register(&mut conn, name, version, &filter, false)
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
                    projections.channel().to_owned(),
                    shutdown.clone(),
                )
                .instrument(tracing::debug_span!("cqrs_postgres.projection.listener")),
        );
        let operations = store.operations();
        let shared = Arc::new(Shared {
            pool,
            projections,
            hub,
            owner: owner.clone(),
            begin: store
                .begin_view_transaction(config.synchronous_commit)
                .into(),
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
                operations,
                shutdown: shutdown_tx,
                tasks: Mutex::new(Some(Tasks {
                    listener,
                    supervisor,
                })),
            }),
        })
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
}
