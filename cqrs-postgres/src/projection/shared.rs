//! What the parts of one runner share: its settings, its connections and what its
//! listener hears.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use super::listener::Hub;
use crate::db::Projections;

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
    pub(crate) projections: Projections,
    pub(crate) hub: Arc<Hub>,
    pub(crate) owner: String,
    pub(crate) config: Config,
    pub(crate) shutdown: watch::Receiver<bool>,
}
