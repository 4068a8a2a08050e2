//! The configuration methods the builder replaces, kept while callers move to it.

use std::sync::Arc;

use super::{Cqrs, CqrsTuning, Local, RetryPolicy};
use crate::{Aggregate, EventStore, SnapshotPolicy};

#[doc(hidden)]
impl<A, S> Cqrs<A, S>
where
    A: Aggregate,
    S: EventStore + ?Sized,
{
    #[doc(hidden)]
    pub fn with_services(store: S, services: A::Services) -> Self
    where
        S: Sized,
    {
        Self::builder(store).services(services).build()
    }

    #[doc(hidden)]
    pub fn from_arc(store: Arc<S>, services: A::Services) -> Self {
        Self::builder(store).services(services).build()
    }

    #[doc(hidden)]
    #[must_use]
    pub fn with_cache(mut self, capacity: usize) -> Self {
        self.tuning = CqrsTuning::default().cache(capacity);
        self.local = (capacity > 0).then(|| Arc::new(Local::new(capacity)));
        self
    }

    #[doc(hidden)]
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    #[doc(hidden)]
    #[must_use]
    pub fn with_snapshots(mut self, snapshots: SnapshotPolicy) -> Self {
        self.snapshots = snapshots;
        self
    }
}
