//! Benchmark of the PostgreSQL read side: projection rebuilds, live lag, inline views.
//!
//! Run it, in release mode, with one command from the workspace root:
//!
//! ```text
//! cargo run --release -p example-pg-read-bench
//! ```
//!
//! It needs a PostgreSQL server: `DATABASE_URL` (a user allowed to create schemas), by
//! default `postgres://postgres@127.0.0.1:5432/postgres`. Everything it writes lives in
//! schemas `read_bench_<pid>*` that it drops at the end. Optional knobs: `EVENTS`
//! (1000000), `ACCOUNTS` (1000), `BATCH` (5000), `W1_DEPOSITS` (200).
//!
//! It prints, in one run:
//! - rebuild: a balance projection (one row per account, deltas buffered per batch and
//!   written by one statement) replaying a log of `EVENTS / 2` and then `EVENTS` events
//!   from the start, in a child process each time so that its peak memory (`VmHWM`) is
//!   the rebuild's own: events/s and peak memory;
//! - beside each rebuild, the raw multi-row INSERT rate of the same number of
//!   balance-shaped rows (`BATCH` rows per statement, each its own transaction, one
//!   connection), taken just before and just after it; and once, the same for
//!   event-shaped rows (the log's own columns and keys);
//! - the same view written by one statement per event (no buffering), over the first
//!   100,000 events;
//! - live lag: w1 (16 tasks, each on its own account, Open + `W1_DEPOSITS` deposits
//!   through the command pipeline) with the projection running on a pool of its own;
//!   p50/p99 from the append's commit to the commit of the batch that applied it (seen as
//!   the checkpoint's notification);
//! - w1 without any projection, then w4: w1 with an inline balance projection, kept by a
//!   handler in Rust inside each append's transaction, and kept by inline SQL inside the
//!   append statement itself: commands/s, without and then with the pipeline's aggregate
//!   cache.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{Aggregate, EventStore, Metadata};
use cqrs_postgres::{PgEventStore, PgStoreTuning};
use example_bank_account::{AccountEvent, BankAccount};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, PgPool};

mod rebuild;
mod views;
mod writes;

use rebuild::{plain_rebuild, rebuild, rebuild_child};
use writes::{inline, live_lag};

pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub(crate) fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * pct / 100).min(sorted.len() - 1)]
}

/// Peak resident memory of this process, in KiB.
pub(crate) fn peak_memory_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `<schema>.bench_balances_v1(account, balance, movements)`: deltas buffered per
/// account during a batch and written by one statement in `flush`.
pub(crate) fn options() -> anyhow::Result<PgConnectOptions> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let options: PgConnectOptions = url.parse().context("DATABASE_URL")?;
    Ok(options.disable_statement_logging())
}

pub(crate) async fn pool(max: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .test_before_acquire(false)
        .connect_with(options()?)
        .await
        .context("connect to DATABASE_URL")
}

/// The store the workloads write with: appends batched as `APPEND_BATCHES` says (the
/// store's default when unset).
pub(crate) fn store(pool: &PgPool, schema: &str) -> anyhow::Result<PgEventStore> {
    let mut tuning = PgStoreTuning::default();
    if let Ok(batches) = std::env::var("APPEND_BATCHES") {
        tuning = tuning.append_batches(batches.parse().context("APPEND_BATCHES")?);
    }
    Ok(PgEventStore::builder(pool.clone())
        .schema(schema)
        .tuning(tuning)
        .build()?)
}

async fn drop_schema(pool: &PgPool, schema: &str) -> anyhow::Result<()> {
    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, schema, target] = args.as_slice()
        && flag == "--rebuild"
    {
        return rebuild_child(schema, target.parse()?).await;
    }

    let pool = pool(20).await?;
    let schema = format!("read_bench_{}", std::process::id());
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await?;
    println!(
        "PostgreSQL {version}, schema {schema}, {} cores",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let outcome = run(&pool, &schema).await;
    drop_schema(&pool, &schema).await?;
    drop_schema(&pool, &format!("{schema}_live")).await?;
    drop_schema(&pool, &format!("{schema}_inline")).await?;
    pool.close().await;
    outcome
}

async fn run(pool: &PgPool, schema: &str) -> anyhow::Result<()> {
    let events = env_u64("EVENTS", 1_000_000);
    let accounts = env_u64("ACCOUNTS", 1000);
    let batch = env_u64("BATCH", 5000);
    let store = store(pool, schema)?;
    store.migrate().await?;

    let raw_events = raw_insert(pool, schema, 200_000, batch, true).await?;
    println!(
        "raw  multi-row INSERT of event-shaped rows (the log's columns and keys), {batch} rows per \
         statement and transaction, one connection: {raw_events:>9.0} rows/s"
    );

    let half = events / 2;
    let filled = fill(&store, accounts, half).await?;
    println!("log  {half} events appended at {filled:.0} events/s");
    let first = rebuild(&store, pool, schema, batch, raw_events).await?;
    let filled = fill_more(&store, accounts, half, events - half).await?;
    println!("log  {events} events in total ({filled:.0} events/s)");
    let second = rebuild(&store, pool, schema, batch, raw_events).await?;
    println!(
        "     peak memory {} KiB at {} events, {} KiB at {} events",
        first.hwm_kib, first.events, second.hwm_kib, second.events
    );
    plain_rebuild(&store, schema, 100_000).await?;

    live_lag(pool, &format!("{schema}_live"), env_u64("W1_DEPOSITS", 200)).await?;
    inline(
        pool,
        &format!("{schema}_inline"),
        env_u64("W1_DEPOSITS", 200),
    )
    .await?;
    Ok(())
}

/// The raw limit: `rows` rows in multi-row INSERTs of `batch` rows, each statement its
/// own transaction, on one connection. Balance-shaped rows (what the rebuild writes) or
/// event-shaped rows (what it reads: the log's own columns and keys).
pub(crate) async fn raw_insert(
    pool: &PgPool,
    schema: &str,
    rows: u64,
    batch: u64,
    event_shaped: bool,
) -> anyhow::Result<f64> {
    let table = if event_shaped {
        format!("\"{schema}\".raw_events")
    } else {
        format!("\"{schema}\".raw_balances")
    };
    sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .execute(pool)
        .await?;
    let (create, insert) = if event_shaped {
        (
            format!(
                "CREATE TABLE {table} (sequence bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
                 stream_type text NOT NULL, stream_id text NOT NULL, stream_version bigint NOT NULL, \
                 event_id uuid NOT NULL UNIQUE, event_type text NOT NULL, schema_version integer NOT NULL, \
                 payload jsonb NOT NULL, metadata jsonb NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(), \
                 UNIQUE (stream_type, stream_id, stream_version))"
            ),
            format!(
                "INSERT INTO {table} (stream_type, stream_id, stream_version, event_id, event_type, \
                 schema_version, payload, metadata) \
                 SELECT 'bank_account', a, v, gen_random_uuid(), 'Deposited', 1, \
                 jsonb_build_object('amount', b), '{{}}'::jsonb \
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS r (a, b, v)"
            ),
        )
    } else {
        (
            format!(
                "CREATE TABLE {table} (account text NOT NULL, balance bigint NOT NULL, movements bigint NOT NULL)"
            ),
            format!(
                "INSERT INTO {table} (account, balance, movements) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])"
            ),
        )
    };
    sqlx::query(AssertSqlSafe(create)).execute(pool).await?;
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    let mut written = 0;
    while written < rows {
        let n = batch.min(rows - written);
        let accounts: Vec<String> = (written..written + n)
            .map(|i| format!("acc-{}", i % 1000))
            .collect();
        let balances: Vec<i64> = (0..n).map(|_| 1).collect();
        let versions: Vec<i64> = (written..written + n)
            .map(|i| i64::try_from(i / 1000).unwrap_or(i64::MAX))
            .collect();
        sqlx::query(AssertSqlSafe(insert.as_str()))
            .bind(&accounts)
            .bind(&balances)
            .bind(&versions)
            .execute(&mut *conn)
            .await?;
        written += n;
    }
    Ok(per_second(rows, started.elapsed()))
}

/// Appends `count` events over `accounts` accounts (an Open, then deposits), 1000
/// events per append, 8 appends at a time; returns events/s.
pub(crate) async fn fill(store: &PgEventStore, accounts: u64, count: u64) -> anyhow::Result<f64> {
    fill_range(store, accounts, 0, count).await
}

pub(crate) async fn fill_more(
    store: &PgEventStore,
    accounts: u64,
    from: u64,
    count: u64,
) -> anyhow::Result<f64> {
    fill_range(store, accounts, from, count).await
}

pub(crate) async fn fill_range(
    store: &PgEventStore,
    accounts: u64,
    from: u64,
    count: u64,
) -> anyhow::Result<f64> {
    let per_account_before = from / accounts;
    let per_account = count / accounts;
    let started = Instant::now();
    let next = Arc::new(Mutex::new(0_u64));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (store, next) = (store.clone(), Arc::clone(&next));
        tasks.spawn(async move {
            loop {
                let account = {
                    let mut next = next.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    let account = *next;
                    *next += 1;
                    account
                };
                if account >= accounts {
                    return anyhow::Ok(());
                }
                let id = format!("acc-{account}");
                let mut version = per_account_before;
                let end = per_account_before + per_account;
                while version < end {
                    let chunk: Vec<NewEvent> = (version..end.min(version + 1000))
                        .map(|v| {
                            let event = if v == 0 {
                                AccountEvent::Opened {
                                    owner: "bench".to_owned(),
                                }
                            } else {
                                AccountEvent::Deposited { amount: 1 }
                            };
                            NewEvent::from_event(&event, Metadata::default())
                        })
                        .collect::<Result<_, _>>()?;
                    let n = chunk.len() as u64;
                    store
                        .append(AppendRequest::new(
                            BankAccount::TYPE,
                            id.clone(),
                            version,
                            chunk,
                        ))
                        .await?;
                    version += n;
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(per_second(count, started.elapsed()))
}
