//! Counters of one pipeline, for metrics: [`CqrsStats`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The upper bounds, in seconds, of the append latency buckets of [`CqrsStats`].
pub const APPEND_BUCKETS: [f64; 11] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The counters one pipeline and its clones share.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    commands: AtomicU64,
    rejected: AtomicU64,
    conflicts: AtomicU64,
    appends: AtomicU64,
    append_nanos: AtomicU64,
    /// Appends at or below each bound of [`APPEND_BUCKETS`] (not cumulative).
    buckets: [AtomicU64; APPEND_BUCKETS.len()],
}

impl Stats {
    pub(crate) fn command(&self) {
        self.commands.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn conflict(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    /// An append (or atomic unit) that reached the store and came back, whatever its
    /// outcome, and how long it took.
    pub(crate) fn append(&self, took: Duration) {
        self.appends.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.append_nanos.fetch_add(nanos, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        if let Some(i) = APPEND_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self, aggregate_type: &'static str) -> CqrsStats {
        let mut cumulative = 0;
        let append_buckets = APPEND_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, count)| {
                cumulative += count.load(Ordering::Relaxed);
                (*bound, cumulative)
            })
            .collect();
        #[allow(clippy::cast_precision_loss, reason = "a sum of seconds to report")]
        let append_seconds_sum = self.append_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        CqrsStats {
            aggregate_type,
            commands: self.commands.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            appends: self.appends.load(Ordering::Relaxed),
            append_seconds_sum,
            append_buckets,
        }
    }
}

/// What a pipeline (and its clones) counted since it was made: the figures an
/// operator graphs (the status page of `cqrs-admin` exposes them as Prometheus
/// metrics).
///
/// ```
/// # use cqrs_core::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// # enum Ticked { Ticked }
/// # #[derive(Debug, Command)]
/// # struct Tick;
/// # #[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
/// # #[cqrs(name = "clock", command = Tick, event = Ticked, error = std::convert::Infallible)]
/// # struct Clock;
/// # impl Apply<Ticked> for Clock { fn apply(&mut self, _: &Ticked) {} }
/// # impl Handle<Tick> for Clock {
/// #     async fn handle(&self, _: &Tick, (): &()) -> Result<Vec<Ticked>, std::convert::Infallible> { Ok(vec![Ticked::Ticked]) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let clocks = Cqrs::<Clock, _>::new(MemoryEventStore::new());
/// clocks.execute("c-1", Tick).await?;
/// let stats = clocks.stats();
/// assert_eq!((stats.aggregate_type, stats.commands, stats.appends), ("clock", 1, 1));
/// assert_eq!(stats.append_buckets.last().map(|(_, n)| *n), Some(1));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CqrsStats {
    /// The pipeline's aggregate type.
    pub aggregate_type: &'static str,
    /// Commands executed (over one aggregate or several).
    pub commands: u64,
    /// Of those, the ones the aggregate refused.
    pub rejected: u64,
    /// Appends that met a concurrent write (each retried or, retries spent, reported).
    pub conflicts: u64,
    /// Appends sent to the store (atomic units count once), whatever their outcome.
    pub appends: u64,
    /// How long they took in all, in seconds.
    pub append_seconds_sum: f64,
    /// For each bound of [`APPEND_BUCKETS`], how many appends took at most that long
    /// (cumulative, as a Prometheus histogram counts; the slower ones only in
    /// [`appends`](Self::appends)).
    pub append_buckets: Vec<(f64, u64)>,
}
