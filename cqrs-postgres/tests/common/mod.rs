//! Shared by the integration tests: a fresh, migrated schema per test on the server named
//! by `DATABASE_URL` (a superuser URL; default `postgres://postgres@127.0.0.1:5432/postgres`).

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses a different part"
)]

pub mod counter;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cqrs_postgres::{PgEventStore, PgEventStoreBuilder};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A schema name no other test (in this or another process) uses.
pub fn unique_schema(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t_{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn connect_options(application_name: &str) -> PgConnectOptions {
    database_url()
        .parse::<PgConnectOptions>()
        .expect("DATABASE_URL is a PostgreSQL URL")
        .application_name(application_name)
        .disable_statement_logging()
}

/// A pool of up to `max` connections that does not ping before use.
pub async fn pool(max: u32, application_name: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(connect_options(application_name))
        .await
        .expect("connect to DATABASE_URL")
}

/// A migrated store in its own schema; drop it with [`TestStore::cleanup`].
pub struct TestStore {
    pub store: PgEventStore,
}

impl TestStore {
    pub async fn new(prefix: &str) -> Self {
        Self::with_pool_size(prefix, 8).await
    }

    pub async fn with_pool_size(prefix: &str, max: u32) -> Self {
        let schema = unique_schema(prefix);
        let pool = pool(max, &schema).await;
        Self::on_pool(pool, &schema).await
    }

    pub async fn on_pool(pool: PgPool, schema: &str) -> Self {
        let store = PgEventStore::builder(pool)
            .schema(schema)
            .build()
            .expect("valid schema name");
        store.migrate().await.expect("migrate");
        Self { store }
    }

    pub fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// `sql` with `{schema}` replaced by the quoted schema name.
    pub fn sql(&self, sql: &str) -> String {
        sql.replace("{schema}", &format!("\"{}\"", self.store.schema()))
    }

    pub async fn cleanup(self) {
        drop_schema(self.store.pool(), self.store.schema()).await;
        self.store.pool().close().await;
    }
}

/// A store like `store` (its pool, schema and settings) with `configure` applied to its
/// builder.
pub fn reconfigured(
    store: &PgEventStore,
    configure: impl FnOnce(PgEventStoreBuilder) -> PgEventStoreBuilder,
) -> PgEventStore {
    configure(store.to_builder())
        .build()
        .expect("a valid store configuration")
}

pub async fn drop_schema(pool: &PgPool, schema: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(pool)
    .await
    .expect("drop the test schema");
}

/// Polls `check` every 10 ms until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a future to completion, catching a panic so the caller can clean up first.
pub async fn catch_unwind<F: std::future::Future>(
    future: F,
) -> Result<F::Output, Box<dyn std::any::Any + Send>> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(output)) => std::task::Poll::Ready(Ok(output)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    })
    .await
}

/// The store's append statement, to run inside a transaction the test controls (with its
/// placeholders still in: see [`raw_append`]).
pub const APPEND_SQL: &str = include_str!("../../src/sql/append.sql");

/// The payload of the append's `NOTIFY` (`"<commit>.<sequence>"`), as the store splices
/// it into its statements.
pub const POSITION_NOTICE_SQL: &str = "transaction_id::text || '.' || sequence::text";

/// The insert the append statement splices in.
pub const APPEND_INSERT_SQL: &str = include_str!("../../src/sql/append_insert.sql");

/// Runs the store's own append statement for one event on `conn` (typically inside a
/// transaction held open by the test). Returns the position, or `None` on a conflict.
pub async fn raw_append(
    conn: &mut sqlx::PgConnection,
    t: &TestStore,
    stream_id: &str,
    expected: i64,
    event_id: uuid::Uuid,
) -> Result<Option<(i64, i64)>, sqlx::Error> {
    let row: Option<(bool, i64, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(
        t.sql(&APPEND_SQL.replace("{insert}", APPEND_INSERT_SQL))
            .replace("{inline_columns}", "")
            .replace("{inline_statements}", "")
            .replace("{position_notice}", POSITION_NOTICE_SQL),
    ))
    .bind("torture")
    .bind(stream_id)
    .bind(expected)
    .bind(vec![event_id])
    .bind(vec!["Numbered"])
    .bind(vec![1_i32])
    .bind(vec![serde_json::json!({ "held": true })])
    .bind(vec![serde_json::json!({})])
    .bind(None::<uuid::Uuid>)
    .bind(t.store.channel())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(_, _, _, transaction_id, sequence)| (transaction_id, sequence)))
}

/// A small deterministic random number generator (xorshift64*), so failures reproduce
/// from the printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Writes version 1 of the stream `torture/<stream_id>` in a transaction left open: an
/// append of that version waits on the server until the transaction ends (a rollback
/// lets it through).
pub async fn hold_stream(
    t: &TestStore,
    stream_id: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut holder = t.pool().begin().await.expect("begin");
    raw_append(&mut holder, t, stream_id, 0, uuid::Uuid::new_v4())
        .await
        .expect("the test's own write")
        .expect("the stream is new");
    holder
}

/// Waits until a session named `application_name` waits on a lock (for at most 10 s).
pub async fn until_waiting_on_a_lock(pool: &PgPool, application_name: &str) {
    let waiting = eventually(Duration::from_secs(10), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND wait_event_type = 'Lock'",
        )
        .bind(application_name)
        .fetch_one(pool)
        .await
        .ok()?;
        (n > 0).then_some(())
    })
    .await;
    assert!(
        waiting.is_some(),
        "no session of {application_name} waited on a lock"
    );
}
