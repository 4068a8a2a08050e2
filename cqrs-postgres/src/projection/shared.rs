//! What the parts of one runner share: its settings, its connections and what its
//! listener hears.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use super::listener::Hub;
use crate::db::Projections;

/// How a runner spends connections, round trips and WAL flushes. The defaults suit most
/// applications; the guide's performance page has the measurements behind them.
///
/// ```
/// use std::time::Duration;
///
/// use cqrs_postgres::PgRunnerTuning;
///
/// let tuning = PgRunnerTuning::default()
///     .batch_size(5000)
///     .poll_interval(Duration::from_millis(100));
/// assert_eq!(tuning.batch_size, 5000);
/// assert_eq!(tuning.claim_interval, Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgRunnerTuning {
    /// How many events one transaction applies at most (default 1000; at least 1).
    pub batch_size: usize,
    /// How often a projection looks at the log when no notification arrives (default
    /// 500 ms; at least 1 ms). This bounds the delay a lost notification can cause.
    pub poll_interval: Duration,
    /// How often the runner tries to take ownership of the projections other processes
    /// do not hold, and checks that its lock connection is alive (default 1 s; at least
    /// 10 ms). A projection whose owner died is taken over within about this interval.
    pub claim_interval: Duration,
    /// Whether a batch's commit waits for its WAL flush (default `false`).
    ///
    /// It need not for exactly-once: a view's changes and its checkpoint commit
    /// together, so a server crash that loses a batch's commit loses both, and the
    /// worker applies the batch again from the older checkpoint. The log itself stays
    /// durable: appends are not affected. What a crash can do without the flush is take
    /// a view back, for a moment, behind what a reader already saw (after
    /// [`wait_for`](crate::PgProjectionRunner::wait_for)), until the batch is applied
    /// again. Set it to `true` to rule that out, at the cost of one WAL flush per batch.
    pub synchronous_commit: bool,
}

impl Default for PgRunnerTuning {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            poll_interval: Duration::from_millis(500),
            claim_interval: Duration::from_secs(1),
            synchronous_commit: false,
        }
    }
}

impl PgRunnerTuning {
    /// Sets [`batch_size`](Self::batch_size).
    #[must_use]
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Sets [`poll_interval`](Self::poll_interval).
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets [`claim_interval`](Self::claim_interval).
    #[must_use]
    pub fn claim_interval(mut self, interval: Duration) -> Self {
        self.claim_interval = interval;
        self
    }

    /// Sets [`synchronous_commit`](Self::synchronous_commit).
    #[must_use]
    pub fn synchronous_commit(mut self, synchronous: bool) -> Self {
        self.synchronous_commit = synchronous;
        self
    }

    /// The same, with each knob raised to its least useful value.
    fn bounded(self) -> Self {
        Self {
            batch_size: self.batch_size.max(1),
            poll_interval: self.poll_interval.max(Duration::from_millis(1)),
            claim_interval: self.claim_interval.max(Duration::from_millis(10)),
            synchronous_commit: self.synchronous_commit,
        }
    }
}

/// Settings shared by the workers of one runner.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) batch_size: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) claim_interval: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) synchronous_commit: bool,
}

impl Default for Config {
    fn default() -> Self {
        let mut config = Self {
            batch_size: 0,
            poll_interval: Duration::ZERO,
            claim_interval: Duration::ZERO,
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            synchronous_commit: false,
        };
        config.tune(PgRunnerTuning::default());
        config
    }
}

impl Config {
    /// Takes the knobs of `tuning`.
    pub(crate) fn tune(&mut self, tuning: PgRunnerTuning) {
        let tuning = tuning.bounded();
        self.batch_size = tuning.batch_size;
        self.poll_interval = tuning.poll_interval;
        self.claim_interval = tuning.claim_interval;
        self.synchronous_commit = tuning.synchronous_commit;
    }
}

/// What the workers of one runner share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pool: PgPool,
    pub(crate) projections: Projections,
    pub(crate) hub: Arc<Hub>,
    pub(crate) owner: String,
    pub(crate) config: Config,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The statement that opens a view's transaction: the store's schema first on
    /// `search_path`, and the configured `synchronous_commit`.
    pub(crate) begin: Arc<str>,
}
