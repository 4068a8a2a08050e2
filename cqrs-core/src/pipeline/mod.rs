//! The command pipeline: [`Cqrs`] loads an aggregate, runs its pure handler, appends
//! what it decided with optimistic concurrency, retries on a conflict, snapshots and
//! caches.
//!
//! - `builder`: configuration ([`CqrsBuilder`], [`CqrsTuning`]);
//! - `run`: one command, from its metadata to its outcome;
//! - `load`: an aggregate's state from its stream (snapshot + tail);
//! - `outcome`: what a command comes to;
//! - `retry`: the policy after a conflict.

mod across;
mod builder;
mod load;
mod outcome;
mod retry;
mod run;
mod stats;

use std::fmt;
use std::sync::Arc;

use tracing::{Instrument, field};

pub use across::{AcrossOutcome, Decided};
pub use builder::{CqrsBuilder, CqrsTuning, DefaultServices, GivenServices, ServicesOf};
pub use outcome::{CommandError, CommandOutcome, Loaded};
pub use retry::RetryPolicy;
use stats::Stats;
pub use stats::{APPEND_BUCKETS, CqrsStats};

use crate::cache::{KeyedLocks, StateCache};
use crate::{Aggregate, Command, CommandMetadata, EventStore, SnapshotPolicy};

/// The command pipeline for one aggregate type on one store.
///
/// `execute` loads the aggregate (snapshot + tail, or its state kept in this process),
/// runs its pure `handle`, appends the events with the loaded version as the expected
/// version, and on a conflict reloads and runs `handle` again per the [`RetryPolicy`].
/// It then writes a snapshot when the [`SnapshotPolicy`] says so (in the background:
/// the reply never waits for it) and returns a [`CommandOutcome`] whose position token
/// gives read-your-writes.
///
/// [`Cqrs::new`] gives the defaults a production service should run: retries on
/// conflict, the aggregate's snapshot policy, and the in-process state cache (see
/// [`CqrsTuning::cache`]). [`Cqrs::builder`] changes them.
///
/// Cheap to clone: clones share the store, the services and the cache.
pub struct Cqrs<A: Aggregate, S: ?Sized> {
    store: Arc<S>,
    services: Arc<A::Services>,
    retry: RetryPolicy,
    snapshots: SnapshotPolicy,
    tuning: CqrsTuning,
    local: Option<Arc<Local<A>>>,
    stats: Arc<Stats>,
}

/// In-process state shared by the clones of one pipeline.
#[derive(Debug)]
struct Local<A> {
    cache: StateCache<A>,
    locks: KeyedLocks,
}

impl<A> Local<A> {
    fn new(capacity: usize) -> Self {
        Self {
            cache: StateCache::new(capacity),
            locks: KeyedLocks::default(),
        }
    }
}

impl<A: Aggregate, S: ?Sized> fmt::Debug for Cqrs<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cqrs")
            .field("aggregate", &A::TYPE)
            .field("retry", &self.retry)
            .field("snapshots", &self.snapshots)
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate, S: ?Sized> Clone for Cqrs<A, S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            services: Arc::clone(&self.services),
            retry: self.retry,
            snapshots: self.snapshots,
            tuning: self.tuning,
            local: self.local.clone(),
            stats: Arc::clone(&self.stats),
        }
    }
}

impl<A, S> Cqrs<A, S>
where
    A: Aggregate,
    A::Services: Default,
    S: EventStore,
{
    /// A pipeline on `store` with the default services, retry and snapshot policies and
    /// tuning: the same as `Cqrs::builder(store).build()`. `store` may be shared: an
    /// `Arc` of a store, or an `Arc<dyn EventStore>`, is a store too.
    pub fn new(store: S) -> Self {
        Self::builder(store).build()
    }
}

impl<A, S> Cqrs<A, S>
where
    A: Aggregate,
    S: EventStore,
{
    /// A pipeline on `store`, to configure: see [`CqrsBuilder`].
    pub fn builder(store: S) -> CqrsBuilder<A, S> {
        CqrsBuilder::new(Arc::new(store))
    }
}

impl<A, S> Cqrs<A, S>
where
    A: Aggregate,
    S: EventStore + ?Sized,
{
    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The services handed to `handle`.
    pub fn services(&self) -> &A::Services {
        &self.services
    }

    /// The retry policy.
    pub fn retry(&self) -> RetryPolicy {
        self.retry
    }

    /// The snapshot policy.
    pub fn snapshots(&self) -> SnapshotPolicy {
        self.snapshots
    }

    /// The tuning.
    pub fn tuning(&self) -> CqrsTuning {
        self.tuning
    }

    /// What this pipeline and its clones counted: commands, refusals, conflicts, and
    /// the appends' latency (see [`CqrsStats`]).
    #[must_use]
    pub fn stats(&self) -> CqrsStats {
        self.stats.snapshot(A::TYPE)
    }

    /// Executes a command on the aggregate `id`.
    ///
    /// # Errors
    ///
    /// [`CommandError::Rejected`] when the aggregate refuses, [`CommandError::Conflict`]
    /// when retries ran out, [`CommandError::Store`] when the store fails. In each case
    /// nothing was written.
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        self.execute_with(id, command, CommandMetadata::default())
            .await
    }

    /// Executes a command that carries its aggregate id (see [`Command::aggregate_id`]).
    ///
    /// # Errors
    ///
    /// [`CommandError::MissingAggregateId`] when the command carries none; otherwise as
    /// [`execute`](Self::execute).
    pub async fn dispatch(
        &self,
        command: A::Command,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        self.dispatch_with(command, CommandMetadata::default())
            .await
    }

    /// [`dispatch`](Self::dispatch) with metadata.
    ///
    /// # Errors
    ///
    /// As for [`dispatch`](Self::dispatch).
    pub async fn dispatch_with(
        &self,
        command: A::Command,
        metadata: CommandMetadata,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        let Some(id) = command.aggregate_id().map(str::to_owned) else {
            return Err(CommandError::MissingAggregateId {
                command: command.name(),
            });
        };
        self.execute_with(&id, command, metadata).await
    }

    /// Executes a command with metadata: an idempotency key, a correlation id, headers.
    ///
    /// With a command id that was already executed, nothing is appended and the original
    /// outcome is returned with `duplicate: true`.
    ///
    /// # Errors
    ///
    /// As for [`execute`](Self::execute).
    pub async fn execute_with(
        &self,
        id: &str,
        command: A::Command,
        metadata: CommandMetadata,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        let span = tracing::debug_span!(
            "cqrs.execute",
            aggregate_type = A::TYPE,
            aggregate_id = %id,
            command = command.name(),
            stream_version = field::Empty,
            retries = field::Empty,
        );
        self.run(id, &command, metadata).instrument(span).await
    }
}
