//! Shared by the projection tests: a balance view per account (one row per counter
//! stream) with fault injection, the fold of the log it must equal, and small helpers.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses a different part"
)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{EventEnvelope, EventStore, Position, Projection};
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgRunnerTuning, PgView};
use serde_json::json;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use crate::common::counter::Added;

/// The stream type the tests write.
pub const STREAM: &str = "counter";

/// Why the test view failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("injected failure at {0}/{1}")]
    Injected(String, u64),
    #[error("database")]
    Database(#[from] sqlx::Error),
}

/// Where the test view fails: once (then succeeds) or always, by (stream id, version).
#[derive(Debug, Default)]
pub struct Faults {
    once: Mutex<HashSet<(String, u64)>>,
    always: Mutex<HashSet<(String, u64)>>,
    panic_once: Mutex<HashSet<(String, u64)>>,
}

impl Faults {
    pub fn fail_once(&self, stream_id: &str, version: u64) {
        lock(&self.once).insert((stream_id.to_owned(), version));
    }

    pub fn fail_always(&self, stream_id: &str, version: u64) {
        lock(&self.always).insert((stream_id.to_owned(), version));
    }

    pub fn heal(&self, stream_id: &str, version: u64) {
        lock(&self.always).remove(&(stream_id.to_owned(), version));
    }

    pub fn panic_once(&self, stream_id: &str, version: u64) {
        lock(&self.panic_once).insert((stream_id.to_owned(), version));
    }

    fn check(&self, stream_id: &str, version: u64) -> Result<(), ViewError> {
        let key = (stream_id.to_owned(), version);
        if lock(&self.panic_once).remove(&key) {
            panic!("injected panic at {stream_id}/{version}");
        }
        if lock(&self.once).remove(&key) || lock(&self.always).contains(&key) {
            return Err(ViewError::Injected(key.0, key.1));
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `balances_v<V>(account, balance, events)` in the test's schema: each counter event
/// adds its amount and 1 to its stream's row (so an event applied twice shows).
#[derive(Debug, Clone)]
pub struct Balances<const V: u32 = 1> {
    pub table: String,
    pub faults: Arc<Faults>,
    pub delay: Duration,
}

impl<const V: u32> Balances<V> {
    pub fn new(schema: &str) -> Self {
        Self {
            table: table::<V>(schema),
            faults: Arc::new(Faults::default()),
            delay: Duration::ZERO,
        }
    }

    pub fn with_faults(mut self, faults: Arc<Faults>) -> Self {
        self.faults = faults;
        self
    }

    /// Sleeps this long in each handler call, to widen the window of a batch.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

pub fn table<const V: u32>(schema: &str) -> String {
    format!("\"{schema}\".balances_v{V}")
}

/// The view readers query: it follows the served version.
pub fn served_view(schema: &str) -> String {
    format!("\"{schema}\".balances")
}

impl<const V: u32> Projection for Balances<V> {
    const NAME: &'static str = "balances";
    const VERSION: u32 = V;
    type Event = Added;
    type Context = PgConnection;
    type Error = ViewError;

    async fn handle(
        &mut self,
        cx: &mut PgConnection,
        event: &EventEnvelope<Added>,
    ) -> Result<(), ViewError> {
        self.faults.check(&event.stream_id, event.stream_version)?;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let amount = i64::try_from(event.payload.amount).unwrap_or(i64::MAX);
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} AS b (account, balance, events) VALUES ($1, $2, 1) \
             ON CONFLICT (account) DO UPDATE \
             SET balance = b.balance + excluded.balance, events = b.events + 1",
            self.table
        )))
        .bind(&event.stream_id)
        .bind(amount)
        .execute(cx)
        .await?;
        Ok(())
    }
}

impl<const V: u32> PgView for Balances<V> {
    async fn setup(&mut self, cx: &mut PgConnection) -> Result<(), ViewError> {
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {} \
             (account text PRIMARY KEY, balance bigint NOT NULL, events bigint NOT NULL)",
            self.table
        )))
        .execute(cx)
        .await?;
        Ok(())
    }

    async fn reset(&mut self, cx: &mut PgConnection) -> Result<(), ViewError> {
        sqlx::query(AssertSqlSafe(format!("TRUNCATE {}", self.table)))
            .execute(cx)
            .await?;
        Ok(())
    }

    async fn activate(&mut self, cx: &mut PgConnection) -> Result<(), ViewError> {
        let served = self.table.rsplit_once('.').map_or_else(
            || "balances".to_owned(),
            |(schema, _)| format!("{schema}.balances"),
        );
        sqlx::query(AssertSqlSafe(format!(
            "CREATE OR REPLACE VIEW {served} AS SELECT * FROM {}",
            self.table
        )))
        .execute(cx)
        .await?;
        Ok(())
    }
}

/// One row per account: (account, balance, events).
pub type Rows = Vec<(String, i64, i64)>;

/// What the view must hold: the fold of the whole log.
pub async fn fold(pool: &PgPool, schema: &str) -> Rows {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT stream_id, sum((payload->>'amount')::bigint)::bigint, count(*)::bigint \
         FROM \"{schema}\".events WHERE stream_type = '{STREAM}' \
         GROUP BY stream_id ORDER BY stream_id"
    )))
    .fetch_all(pool)
    .await
    .expect("fold the log")
}

/// What a table (or view) of balances holds.
pub async fn rows(pool: &PgPool, table: &str) -> Rows {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT account, balance, events FROM {table} ORDER BY account"
    )))
    .fetch_all(pool)
    .await
    .expect("read the view")
}

/// Appends one counter event of `amount` to `stream` at `expected` (its version so far).
pub async fn add(store: &PgEventStore, stream: &str, expected: u64, amount: u64) -> Position {
    store
        .append(AppendRequest::new(
            STREAM,
            stream,
            expected,
            vec![NewEvent::new("Added", 2, json!({ "amount": amount }))],
        ))
        .await
        .expect("append")
        .position
}

/// Sixteen writers, each appending twenty events of 2 to an account of its own (named
/// `<prefix>-<n>`) and reading `table` right after each append: a view kept inside the
/// append (inline) must already show it.
pub async fn writers_see_each_append_at_once(store: &PgEventStore, table: &str, prefix: &str) {
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..16 {
        let store = store.clone();
        let table = table.to_owned();
        let account = format!("{prefix}-{w}");
        writers.spawn(async move {
            for version in 0..20_u64 {
                add(&store, &account, version, 2).await;
                let seen: (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT balance, events FROM {table} WHERE account = $1"
                )))
                .bind(&account)
                .fetch_one(store.pool())
                .await
                .expect("the row is there");
                let n = i64::try_from(version + 1).unwrap_or(i64::MAX);
                assert_eq!(seen, (2 * n, n), "{account} after {} appends", version + 1);
            }
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined.expect("writer");
    }
}

/// Appends `count` events of `amount` to `stream`, starting at version `from`, in
/// appends of up to `chunk` events; returns the last position.
pub async fn add_many(
    store: &PgEventStore,
    stream: &str,
    from: u64,
    count: u64,
    chunk: u64,
    amount: u64,
) -> Position {
    let mut version = from;
    let mut last = Position::START;
    while version < from + count {
        let n = chunk.min(from + count - version);
        let events = (0..n)
            .map(|_| NewEvent::new("Added", 2, json!({ "amount": amount })))
            .collect();
        last = store
            .append(AppendRequest::new(STREAM, stream, version, events))
            .await
            .expect("append")
            .position
            .max(last);
        version += n;
    }
    last
}

/// Waits until the served version of `name` has passed `position`.
///
/// (Not `store.head()`: that is only what is readable now, and a transaction of another
/// test may hold the readable horizon back behind appends that have committed.)
pub async fn caught_up(
    runner: &PgProjectionRunner,
    name: &str,
    position: Position,
    timeout: Duration,
) {
    runner
        .wait_for_named(name, position, timeout)
        .await
        .expect("the projection catches up");
}

/// The environment variable that turns a test binary into a projection worker process.
pub const WORKER_SCHEMA: &str = "CQRS_TEST_WORKER_SCHEMA";

/// A projection worker in a process of its own: this test binary again, running only
/// the test `test_name`, which must call [`run_worker_if_asked`]. Killed on drop.
pub struct WorkerProcess {
    pub owner: String,
    pub child: std::process::Child,
}

impl WorkerProcess {
    /// Starts a worker owning as `owner`; `delay` is slept per event, `batch` events per
    /// transaction, `claim` the claim interval.
    pub fn spawn(
        test_name: &str,
        schema: &str,
        owner: &str,
        delay: Duration,
        batch: usize,
        claim: Duration,
    ) -> Self {
        let exe = std::env::current_exe().expect("the test binary");
        let child = std::process::Command::new(exe)
            .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
            .env(WORKER_SCHEMA, schema)
            .env("CQRS_TEST_WORKER_OWNER", owner)
            .env("CQRS_TEST_WORKER_DELAY_US", delay.as_micros().to_string())
            .env("CQRS_TEST_WORKER_BATCH", batch.to_string())
            .env("CQRS_TEST_WORKER_CLAIM_MS", claim.as_millis().to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn a worker process");
        Self {
            owner: owner.to_owned(),
            child,
        }
    }

    /// SIGKILL: no destructor, no rollback, no unlock runs in the worker.
    pub fn kill(&mut self) {
        // `Child::kill` sends SIGKILL on Unix.
        self.child.kill().expect("SIGKILL the worker");
        self.child.wait().expect("reap the worker");
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// In a process started by [`WorkerProcess::spawn`]: runs a projection runner with the
/// balance view until killed (or until the parent test process is gone). Elsewhere:
/// returns at once.
pub fn run_worker_if_asked() {
    let Ok(schema) = std::env::var(WORKER_SCHEMA) else {
        return;
    };
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let owner = env("CQRS_TEST_WORKER_OWNER");
    let delay = Duration::from_micros(env("CQRS_TEST_WORKER_DELAY_US").parse().unwrap_or(0));
    let batch: usize = env("CQRS_TEST_WORKER_BATCH").parse().unwrap_or(100);
    let claim = Duration::from_millis(env("CQRS_TEST_WORKER_CLAIM_MS").parse().unwrap_or(1000));
    let parent = std::os::unix::process::parent_id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let pool = crate::common::pool(4, &format!("worker {owner}")).await;
        let store = PgEventStore::builder(pool)
            .schema(&schema)
            .build()
            .expect("schema");
        let runner = PgProjectionRunner::builder(store)
            .owner(owner)
            .tuning(
                PgRunnerTuning::default()
                    .batch_size(batch)
                    .claim_interval(claim)
                    .poll_interval(Duration::from_millis(200)),
            )
            .view(Balances::<1>::new(&schema).with_delay(delay))
            .start()
            .await
            .expect("start the worker's runner");
        // Until killed; a worker whose test is gone stops too.
        while std::os::unix::process::parent_id() == parent {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        runner.shutdown().await;
    });
}

/// A runner with no projection, to wait on and report projections run elsewhere.
pub async fn observer(store: &PgEventStore) -> PgProjectionRunner {
    PgProjectionRunner::builder(store.clone())
        .tuning(PgRunnerTuning::default().poll_interval(Duration::from_millis(100)))
        .start()
        .await
        .expect("start an observer")
}
