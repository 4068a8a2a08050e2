//! [`PgProjectionRunner`]: a started runner, and what it answers about projections.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cqrs_core::{Position, Projection, ProjectionError, ReadYourWrites, Token};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::operations::PgOperations;
use super::shared::Shared;
use super::status::PgProjectionStatus;
use crate::db::{Error, Result};

pub(super) struct Tasks {
    pub(super) listener: JoinHandle<()>,
    pub(super) supervisor: JoinHandle<()>,
}

pub(super) struct Inner {
    pub(super) shared: Arc<Shared>,
    /// Status and operators' requests, shared with [`PgOperations`].
    pub(super) operations: PgOperations,
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) tasks: Mutex<Option<Tasks>>,
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

/// Runs projections of a [`PgEventStore`](crate::PgEventStore)'s log into PostgreSQL views, exactly once,
/// in any number of processes.
///
/// - **Exactly once.** Each batch is one transaction: the handlers write the view
///   through the transaction they are given, and the projection's checkpoint row moves
///   in the same transaction, guarded by the position the batch started from. A crash
///   at any point commits all of a batch or none of it.
/// - **Never skips.** Batches come from the store's commit-safe log, filtered in SQL to
///   the projection's event types.
/// - **Live.** Every append is announced with `NOTIFY`; a projection wakes up at once,
///   and polls every [`poll_interval`](crate::PgRunnerTuning::poll_interval) in case
///   a notification was lost.
/// - **One owner.** Any number of processes may run the same projections. Each holds a
///   session advisory lock per projection it owns, on a connection of its own; when a
///   process dies, PostgreSQL releases its locks and another process takes over within
///   the [`claim_interval`](crate::PgRunnerTuning::claim_interval).
/// - **Failures.** A failing handler is retried with a growing delay, then the
///   projection stops at that event, with the error recorded in its row and shown by
///   [`status`](Self::status); the other projections keep running. Resume with
///   [`retry`](Self::retry) or [`skip`](Self::skip).
/// - **Rebuilds.** [`rebuild`](Self::rebuild) resets a view and replays the log. A new
///   [`VERSION`](cqrs_core::Projection::VERSION) of a projection is built beside the
///   served one and replaces it once caught up (see [`PgView`](crate::PgView)).
/// - **Read your writes.** [`wait_for`](Self::wait_for) returns once a projection has
///   passed a command's position token.
///
/// Clones are cheap handles to the same runner. Dropping the last one stops it;
/// [`shutdown`](Self::shutdown) stops it and waits.
///
/// ```no_run
/// use std::time::Duration;
///
/// use cqrs_core::{EventEnvelope, EventStore, Projection};
/// use cqrs_core::store::{AppendRequest, NewEvent};
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
///     .wait_for::<Balances>(outcome.position, Duration::from_secs(5))
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
    pub(super) inner: Arc<Inner>,
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
    /// This runner's owner name.
    #[must_use]
    pub fn owner(&self) -> &str {
        &self.inner.shared.owner
    }

    /// The `NOTIFY` channel checkpoints and operators' requests are announced on. Its
    /// name and payloads are the runner's own business.
    #[doc(hidden)]
    #[must_use]
    pub fn channel(&self) -> &str {
        self.inner.shared.projections.channel()
    }

    /// The status of every projection version in the store's schema (also those run by
    /// other processes), ordered by name and version.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the query fails.
    pub async fn status(&self) -> Result<Vec<PgProjectionStatus>> {
        self.status_rows(None).await
    }

    /// The status of each version of the projection `name`.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the query fails.
    pub async fn status_of(&self, name: &str) -> Result<Vec<PgProjectionStatus>> {
        self.status_rows(Some(name)).await
    }

    async fn status_rows(&self, name: Option<&str>) -> Result<Vec<PgProjectionStatus>> {
        match name {
            Some(name) => self.inner.operations.projection(name).await,
            None => self.inner.operations.projections().await,
        }
    }

    /// Waits until the served version of projection `P` has passed `token` (see
    /// [`wait_for_named`](Self::wait_for_named)): when it returns, a query of the view sees
    /// the writes behind it, and goes on seeing them across blue/green switches (a new
    /// version is served only once it is at or past the served one). The same as
    /// [`ReadYourWrites::wait_for`], without importing the trait.
    ///
    /// # Errors
    ///
    /// As for [`wait_for_named`](Self::wait_for_named).
    pub async fn wait_for<P: Projection>(
        &self,
        token: impl Into<Token>,
        timeout: Duration,
    ) -> std::result::Result<(), ProjectionError> {
        self.wait_for_named(P::NAME, token, timeout).await
    }

    /// Waits until the served version of the projection `name` has passed `token`: what
    /// [`wait_for`](Self::wait_for) does for a projection named by its type, for a name
    /// known only at run time (an inline SQL projection's, an operator's tool).
    ///
    /// Returns at once for an inline projection. Woken by the checkpoint notifications;
    /// it queries the checkpoint once at the start and again every poll interval or after
    /// the listener reconnected. A name no runner has registered yet is waited for.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Timeout`] when the projection has not passed `token` within
    /// `timeout`; [`ProjectionError::Unknown`] when no runner registered `name` within
    /// it; [`ProjectionError::Backend`] holding an [`Error`] when a query fails or the
    /// runner was shut down.
    #[tracing::instrument(
        level = "debug",
        name = "cqrs_postgres.projection.wait_for",
        skip_all,
        fields(projection = %name),
        err
    )]
    pub async fn wait_for_named(
        &self,
        name: &str,
        token: impl Into<Token>,
        timeout: Duration,
    ) -> std::result::Result<(), ProjectionError> {
        let position = token.into().position();
        let shared = &self.inner.shared;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut served = shared.hub.subscribe_served(name);
        let mut connections = shared.hub.subscribe_connections();
        let mut reached = None;
        loop {
            served.borrow_and_update();
            connections.borrow_and_update();
            if let Some((checkpoint, inline)) = shared
                .projections
                .served_checkpoint(&shared.pool, name)
                .await
                .map_err(ProjectionError::backend)?
            {
                if inline || checkpoint >= position {
                    return Ok(());
                }
                reached = Some(checkpoint);
            }
            let poll = tokio::time::sleep(shared.config.poll_interval);
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    changed = served.changed() => {
                        if changed.is_err() {
                            return Err(ProjectionError::backend(Error::ShutDown));
                        }
                        if let Some(announced) = *served.borrow_and_update() {
                            if announced >= position {
                                return Ok(());
                            }
                            reached = Some(announced);
                        }
                    }
                    _ = connections.changed() => break,
                    () = &mut poll => break,
                    () = tokio::time::sleep_until(deadline) => {
                        return Err(match reached {
                            Some(reached) => ProjectionError::Timeout {
                                projection: name.to_owned(),
                                target: position,
                                reached,
                            },
                            None => ProjectionError::Unknown {
                                projection: name.to_owned(),
                            },
                        });
                    }
                }
            }
        }
    }

    /// Asks the owner of projection `P` at its current
    /// [`VERSION`](cqrs_core::Projection::VERSION) to empty its view (with
    /// [`PgView::reset`](crate::PgView::reset)) and replay the log from the start. Its
    /// status is [`Rebuilding`](crate::PgProjectionState::Rebuilding) until it has caught
    /// up; its view is partial meanwhile (a new `VERSION` is the way to rebuild without
    /// readers seeing that). Returns `false` when there is no such projection.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the update fails.
    pub async fn rebuild<P: Projection>(&self) -> Result<bool> {
        self.rebuild_named(P::NAME, P::VERSION).await
    }

    /// What [`rebuild`](Self::rebuild) does, for a projection named at run time (an
    /// operator's tool).
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the update fails.
    pub async fn rebuild_named(&self, name: &str, version: u32) -> Result<bool> {
        self.inner.operations.rebuild(name, version).await
    }

    /// Resumes projection `P` at its current version, failed, at the event it failed on,
    /// with a fresh set of attempts. Returns `false` when it had not failed.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the update fails.
    pub async fn retry<P: Projection>(&self) -> Result<bool> {
        self.retry_named(P::NAME, P::VERSION).await
    }

    /// What [`retry`](Self::retry) does, for a projection named at run time.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the update fails.
    pub async fn retry_named(&self, name: &str, version: u32) -> Result<bool> {
        self.inner.operations.retry(name, version).await
    }

    /// Resumes projection `P` at its current version, failed, after the event it failed
    /// on, which it will never apply. Returns the skipped event's position, or `None`
    /// when it had not failed.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the update fails.
    pub async fn skip<P: Projection>(&self) -> Result<Option<Position>> {
        self.skip_named(P::NAME, P::VERSION).await
    }

    /// What [`skip`](Self::skip) does, for a projection named at run time.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the update fails.
    pub async fn skip_named(&self, name: &str, version: u32) -> Result<Option<Position>> {
        self.inner.operations.skip(name, version).await
    }

    /// Forgets `version` of projection `P`, no longer served (after a blue/green switch):
    /// its row goes, so status stops reporting it. Its tables are yours to drop. Stop the
    /// processes that still run that version first, or they register it again. Returns
    /// `false` when there is no such version, or it is the served one.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the delete fails.
    pub async fn retire<P: Projection>(&self, version: u32) -> Result<bool> {
        self.retire_named(P::NAME, version).await
    }

    /// What [`retire`](Self::retire) does, for a projection named at run time.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the delete fails.
    pub async fn retire_named(&self, name: &str, version: u32) -> Result<bool> {
        self.inner.operations.retire(name, version).await
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

impl ReadYourWrites for PgProjectionRunner {
    /// See [`PgProjectionRunner::wait_for`].
    async fn wait_for<P: Projection>(
        &self,
        token: impl Into<Token> + Send,
        timeout: Duration,
    ) -> std::result::Result<(), ProjectionError> {
        self.wait_for_named(P::NAME, token, timeout).await
    }
}
