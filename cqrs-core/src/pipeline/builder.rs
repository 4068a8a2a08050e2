//! Configuring a pipeline: [`CqrsBuilder`] and [`CqrsTuning`].

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use super::retry::RetryPolicy;
use super::{Cqrs, Local};
use crate::{Aggregate, SnapshotPolicy};

/// How the pipeline spends memory to save round trips.
///
/// ```
/// use cqrs_core::CqrsTuning;
///
/// assert_eq!(CqrsTuning::default().cache, 1024);
/// let uncached = CqrsTuning::default().cache(0);
/// assert_eq!(uncached.cache, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CqrsTuning {
    /// How many recently used aggregates keep their state in this process (default
    /// 1,024; 0 turns the cache off).
    ///
    /// A command on a cached aggregate skips the load: it costs the append alone, and
    /// the commands of one aggregate run one after the other instead of racing. The
    /// cache cannot serve stale state: if another process wrote meanwhile, the append's
    /// expected-version check fails, the entry is dropped and the command runs again on
    /// freshly loaded state. Turn it off only when memory is tighter than round trips.
    pub cache: usize,
}

impl Default for CqrsTuning {
    fn default() -> Self {
        Self { cache: 1024 }
    }
}

impl CqrsTuning {
    /// Sets [`cache`](Self::cache).
    #[must_use]
    pub fn cache(mut self, capacity: usize) -> Self {
        self.cache = capacity;
        self
    }
}

/// Configures a [`Cqrs`] pipeline; made by [`Cqrs::builder`].
///
/// ```
/// use cqrs_core::prelude::*;
/// use cqrs_core::CqrsTuning;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// # enum Ev { Done {} }
/// # #[derive(Debug, Command)]
/// # enum Cmd { Do {} }
/// # #[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
/// # #[cqrs(command = Cmd, event = Ev, error = std::convert::Infallible)]
/// # struct Thing;
/// # impl Handle<Cmd> for Thing {
/// #     async fn handle(&self, _: &Cmd, _: &()) -> Result<Vec<Ev>, std::convert::Infallible> {
/// #         Ok(vec![Ev::Done {}])
/// #     }
/// # }
/// # impl Apply<Ev> for Thing { fn apply(&mut self, _: &Ev) {} }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let things = Cqrs::<Thing, _>::builder(MemoryEventStore::new())
///     .retry(RetryPolicy::new(20))
///     .snapshots(SnapshotPolicy::every(100))
///     .tuning(CqrsTuning::default().cache(10_000))
///     .build();
/// things.execute("t-1", Cmd::Do {}).await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until `build`"]
pub struct CqrsBuilder<A: Aggregate, S: ?Sized, V = DefaultServices> {
    store: Arc<S>,
    services: V,
    retry: RetryPolicy,
    snapshots: SnapshotPolicy,
    tuning: CqrsTuning,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate, S: ?Sized, V> fmt::Debug for CqrsBuilder<A, S, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CqrsBuilder")
            .field("aggregate", &A::TYPE)
            .field("retry", &self.retry)
            .field("snapshots", &self.snapshots)
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

/// The services of a builder given none: the aggregate's `Services::default()`.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultServices;

/// The services given to a builder.
#[doc(hidden)]
#[derive(Debug)]
pub struct GivenServices<T>(T);

/// Where a builder's services come from.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{A}`'s services have no default",
    note = "give them with `.services(...)` before `.build()`"
)]
pub trait ServicesOf<A: Aggregate> {
    /// The services.
    fn into_services(self) -> A::Services;
}

impl<A: Aggregate> ServicesOf<A> for DefaultServices
where
    A::Services: Default,
{
    fn into_services(self) -> A::Services {
        A::Services::default()
    }
}

impl<A: Aggregate> ServicesOf<A> for GivenServices<A::Services> {
    fn into_services(self) -> A::Services {
        self.0
    }
}

impl<A: Aggregate, S: ?Sized> CqrsBuilder<A, S> {
    pub(super) fn new(store: Arc<S>) -> Self {
        Self {
            store,
            services: DefaultServices,
            retry: RetryPolicy::default(),
            snapshots: A::snapshot_policy(),
            tuning: CqrsTuning::default(),
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate, S: ?Sized, V> CqrsBuilder<A, S, V> {
    /// The read-only collaborators the aggregate's handlers consult (required when its
    /// `Services` type has no default).
    pub fn services(self, services: A::Services) -> CqrsBuilder<A, S, GivenServices<A::Services>> {
        CqrsBuilder {
            store: self.store,
            services: GivenServices(services),
            retry: self.retry,
            snapshots: self.snapshots,
            tuning: self.tuning,
            _aggregate: PhantomData,
        }
    }

    /// How a command is retried after a concurrency conflict (default
    /// [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// When the pipeline snapshots the aggregate (default: the aggregate's own
    /// [`snapshot_policy`](Aggregate::snapshot_policy)).
    pub fn snapshots(mut self, snapshots: SnapshotPolicy) -> Self {
        self.snapshots = snapshots;
        self
    }

    /// How the pipeline spends memory to save round trips (see [`CqrsTuning`]).
    pub fn tuning(mut self, tuning: CqrsTuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// The pipeline.
    pub fn build(self) -> Cqrs<A, S>
    where
        V: ServicesOf<A>,
    {
        let local = (self.tuning.cache > 0).then(|| Arc::new(Local::new(self.tuning.cache)));
        Cqrs {
            store: self.store,
            services: Arc::new(self.services.into_services()),
            retry: self.retry,
            snapshots: self.snapshots,
            tuning: self.tuning,
            local,
            stats: Arc::default(),
        }
    }
}
