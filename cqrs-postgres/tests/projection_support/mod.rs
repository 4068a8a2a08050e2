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

use cqrs_core::{AppendRequest, EventEnvelope, EventStore, NewEvent, Position, Projection};
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgView};
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
        .wait_for(name, position, timeout)
        .await
        .expect("the projection catches up");
}
