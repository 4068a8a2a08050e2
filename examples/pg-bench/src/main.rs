//! Benchmark of the PostgreSQL event store on the bank-account domain.
//!
//! Run it, in release mode, with one command from the workspace root:
//!
//! ```text
//! cargo run --release -p example-pg-bench
//! ```
//!
//! It needs a PostgreSQL server: `DATABASE_URL` (a user allowed to create schemas),
//! by default `postgres://postgres@127.0.0.1:5432/postgres`. Everything it writes lives
//! in a schema `bench_<pid>` that it drops at the end. Optional knobs: `W1_DEPOSITS`
//! (200), `W2_EVENTS` (10000), `W3_SECS` (5), `RAW_SECS` (5).
//!
//! It prints, in one run:
//! - w1: 16 tasks, each on its own account, Open + 200 deposits: commands/s, p50/p99;
//! - w5: 16 tasks, each moving money between two accounts of its own 200 times, each
//!   transfer one command over both appended as one atomic unit: commands/s, p50/p99;
//! - w2: ms per command on a 10,000-event stream without snapshots, with snapshots and
//!   with the in-process cache, against a fresh stream;
//! - w3: 8 tasks depositing into one account: successes/s, conflicts, balance check;
//! - the append of 100 events in one call: events/s;
//! - the raw limit: 16 connections inserting one event-shaped row per autocommit
//!   INSERT: rows/s;
//! - round trips per command, counted by a loopback proxy that sees every
//!   `ReadyForQuery` the server sends.

mod across;
mod proxy;

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cqrs_core::store::{AppendRequest, NewEvent, Snapshot};
use cqrs_core::{Aggregate, Metadata};
use cqrs_core::{CommandError, Cqrs, CqrsTuning, EventStore, RetryPolicy, SnapshotPolicy};
use cqrs_postgres::{PgEventStore, PgNotify, PgStoreTuning};
use example_bank_account::{AccountCommand, AccountEvent, BankAccount};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, PgPool};

type Pipeline = Cqrs<BankAccount, PgEventStore>;

/// A pipeline keeping up to `cache` aggregates in this process (0: none, every command
/// loads its stream).
fn pipeline(store: &PgEventStore, cache: usize, retry: RetryPolicy) -> Pipeline {
    Pipeline::builder(store.clone())
        .retry(retry)
        .tuning(CqrsTuning::default().cache(cache))
        .build()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn deposit(amount: u64) -> AccountCommand {
    AccountCommand::Deposit { amount }
}

fn open() -> AccountCommand {
    AccountCommand::Open {
        owner: "bench".to_owned(),
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * pct / 100).min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let options: PgConnectOptions = url.parse().context("DATABASE_URL")?;
    let options = options.disable_statement_logging();
    let pool = PgPoolOptions::new()
        .max_connections(17)
        .test_before_acquire(false)
        .connect_with(options.clone())
        .await
        .context("connect to DATABASE_URL")?;
    let schema = format!("bench_{}", std::process::id());
    let mut tuning = PgStoreTuning::default();
    if let Ok(batches) = std::env::var("APPEND_BATCHES") {
        tuning = tuning.append_batches(batches.parse().context("APPEND_BATCHES")?);
    }
    let store = PgEventStore::builder(pool.clone())
        .schema(&schema)
        .tuning(tuning)
        .build()?;
    store.migrate().await?;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await?;
    println!(
        "PostgreSQL {version}, schema {schema}, {} cores, appends batched {} at a time",
        std::thread::available_parallelism().map_or(0, usize::from),
        store.tuning().append_batches
    );

    let outcome = run(&store, &pool, &options).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await?;
    pool.close().await;
    outcome
}

async fn run(
    store: &PgEventStore,
    pool: &PgPool,
    options: &PgConnectOptions,
) -> anyhow::Result<()> {
    let raw_secs = Duration::from_secs(env_u64("RAW_SECS", 5));
    let deposits = env_u64("W1_DEPOSITS", 200);
    create_raw_table(store, pool).await?;
    // The machine may be shared: each w1 figure is compared with a raw-limit measurement
    // taken right before it.
    let mut raws = Vec::new();
    for cache in [false, true] {
        let raw = raw_limit(store, pool, raw_secs).await?;
        raws.push(raw);
        let w1 = w1(store, deposits, cache).await?;
        println!(
            "w1   16 tasks x (Open + {deposits} deposits), own accounts, {}: {:>8.0} commands/s  p50 {:.2} ms  p99 {:.2} ms  ({:.0} % of the raw limit measured just before: {raw:.0} rows/s)",
            if cache { "with the cache" } else { "no cache" },
            w1.rate,
            millis(w1.p50),
            millis(w1.p99),
            100.0 * w1.rate / raw
        );
    }
    // Beside w1 without the cache: the same commands, two accounts per command.
    let w5 = across::w5(store, deposits).await?;
    println!(
        "w5   16 tasks x {deposits} transfers between two own accounts, each one atomic unit over both streams, no cache: {:>8.0} commands/s  p50 {:.2} ms  p99 {:.2} ms",
        w5.rate,
        millis(w5.p50),
        millis(w5.p99),
    );
    w2(store, env_u64("W2_EVENTS", 10_000)).await?;
    w3(store, Duration::from_secs(env_u64("W3_SECS", 5))).await?;
    append_100(store).await?;
    raws.push(raw_limit(store, pool, raw_secs).await?);
    let summary: Vec<String> = raws.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "raw  16 connections, one event-shaped row per autocommit INSERT: {:>8.0} rows/s (mean of {} measurements: {})",
        raws.iter().sum::<f64>() / raws.len() as f64,
        raws.len(),
        summary.join(", ")
    );
    round_trips(store, options).await?;
    Ok(())
}

struct W1 {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

async fn w1(store: &PgEventStore, deposits: u64, cache: bool) -> anyhow::Result<W1> {
    let cqrs = pipeline(store, if cache { 1024 } else { 0 }, RetryPolicy::default());
    let prefix = if cache { "w1c" } else { "w1" };
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let cqrs = cqrs.clone();
        tasks.spawn(async move {
            let id = format!("{prefix}-{task}");
            let mut latencies = Vec::with_capacity(usize::try_from(deposits + 1).unwrap_or(0));
            let begun = Instant::now();
            cqrs.execute(&id, open()).await?;
            latencies.push(begun.elapsed());
            for _ in 0..deposits {
                let begun = Instant::now();
                cqrs.execute(&id, deposit(1)).await?;
                latencies.push(begun.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(W1 {
        rate: per_second(latencies.len() as u64, elapsed),
        p50: percentile(&latencies, 50),
        p99: percentile(&latencies, 99),
    })
}

/// Writes an opened account with `events - 1` deposits of 1, in batches.
async fn long_stream(store: &PgEventStore, id: &str, events: u64) -> anyhow::Result<()> {
    let metadata = Metadata::default();
    let mut version = 0;
    while version < events {
        let batch: Vec<NewEvent> = (version..events.min(version + 1000))
            .map(|v| {
                let event = if v == 0 {
                    AccountEvent::Opened {
                        owner: "bench".to_owned(),
                    }
                } else {
                    AccountEvent::Deposited { amount: 1 }
                };
                NewEvent::from_event(&event, metadata.clone())
            })
            .collect::<Result<_, _>>()?;
        let count = batch.len() as u64;
        store
            .append(AppendRequest::new(BankAccount::TYPE, id, version, batch))
            .await?;
        version += count;
    }
    Ok(())
}

/// Mean time of `n` sequential deposits on `id`.
async fn ms_per_command(cqrs: &Pipeline, id: &str, n: u32) -> anyhow::Result<f64> {
    let started = Instant::now();
    for _ in 0..n {
        cqrs.execute(id, deposit(1)).await?;
    }
    Ok(millis(started.elapsed()) / f64::from(n))
}

async fn w2(store: &PgEventStore, events: u64) -> anyhow::Result<()> {
    const N: u32 = 100;
    let plain = pipeline(store, 0, RetryPolicy::default());
    plain.execute("w2-fresh", open()).await?;
    let fresh = ms_per_command(&plain, "w2-fresh", N).await?;

    long_stream(store, "w2-replay", events).await?;
    let replay = ms_per_command(&plain, "w2-replay", N).await?;
    // Where the replay's time goes: the store's one round trip, then decoding and folding.
    let started = Instant::now();
    for _ in 0..10 {
        store
            .load_for_command(BankAccount::TYPE, "w2-replay", BankAccount::STATE_VERSION)
            .await?;
    }
    let fetch = millis(started.elapsed()) / 10.0;

    // With snapshots: one is stored at the stream's end, and the policy keeps them fresh.
    long_stream(store, "w2-snapshot", events).await?;
    let state = BankAccount {
        open: true,
        balance: events - 1,
    };
    store
        .save_snapshot(Snapshot {
            stream_type: BankAccount::TYPE.to_owned(),
            stream_id: "w2-snapshot".to_owned(),
            stream_version: events,
            state_version: BankAccount::STATE_VERSION,
            state: serde_json::to_value(&state)?,
        })
        .await?;
    let snapshotted = Pipeline::builder(store.clone())
        .snapshots(SnapshotPolicy::every(100))
        .tuning(CqrsTuning::default().cache(0))
        .build();
    let snapshot = ms_per_command(&snapshotted, "w2-snapshot", N).await?;

    // With the cache: the first command loads the stream, the others skip the load.
    long_stream(store, "w2-cache", events).await?;
    let cached = pipeline(store, 1024, RetryPolicy::default());
    cached.execute("w2-cache", deposit(1)).await?;
    let cache = ms_per_command(&cached, "w2-cache", N).await?;

    println!(
        "w2   a command on a {events}-event stream: {replay:.2} ms without snapshots or cache, \
         {snapshot:.2} ms with snapshots ({:.2}x fresh), {cache:.2} ms with the cache ({:.2}x fresh); \
         fresh stream {fresh:.2} ms (replay: {fetch:.2} ms in the store's load)",
        snapshot / fresh,
        cache / fresh,
    );
    Ok(())
}

async fn w3(store: &PgEventStore, duration: Duration) -> anyhow::Result<()> {
    for (label, cqrs) in [
        ("no cache", pipeline(store, 0, RetryPolicy::new(50))),
        (
            "with the cache",
            pipeline(store, 1024, RetryPolicy::new(50)),
        ),
    ] {
        let id = format!("w3-{}", label.replace(' ', "-"));
        cqrs.execute(&id, open()).await?;
        let successes = Arc::new(AtomicU64::new(0));
        let conflicts = Arc::new(AtomicU64::new(0));
        let gave_up = Arc::new(AtomicU64::new(0));
        let deposited = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..8_u64 {
            let (cqrs, id) = (cqrs.clone(), id.clone());
            let (successes, conflicts, gave_up, deposited) = (
                Arc::clone(&successes),
                Arc::clone(&conflicts),
                Arc::clone(&gave_up),
                Arc::clone(&deposited),
            );
            tasks.spawn(async move {
                while started.elapsed() < duration {
                    let amount = task + 1;
                    match cqrs.execute(&id, deposit(amount)).await {
                        Ok(outcome) => {
                            successes.fetch_add(1, Ordering::Relaxed);
                            conflicts.fetch_add(u64::from(outcome.retries), Ordering::Relaxed);
                            deposited.fetch_add(amount, Ordering::Relaxed);
                        }
                        Err(CommandError::Conflict { attempts, .. }) => {
                            gave_up.fetch_add(1, Ordering::Relaxed);
                            conflicts.fetch_add(u64::from(attempts), Ordering::Relaxed);
                        }
                        Err(other) => return Err(anyhow::anyhow!("deposit failed: {other}")),
                    }
                }
                anyhow::Ok(())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined??;
        }
        let elapsed = started.elapsed();
        let balance = Pipeline::new(store.clone()).load(&id).await?.state.balance;
        let expected = deposited.load(Ordering::Relaxed);
        println!(
            "w3   8 tasks depositing into one account ({label}): {:>8.0} successes/s, {} conflicts, {} gave up, balance {balance} {} {expected} deposited",
            per_second(successes.load(Ordering::Relaxed), elapsed),
            conflicts.load(Ordering::Relaxed),
            gave_up.load(Ordering::Relaxed),
            if balance == expected {
                "=="
            } else {
                "!= (LOST UPDATES)"
            },
        );
        anyhow::ensure!(balance == expected, "lost updates in w3 ({label})");
    }
    Ok(())
}

async fn append_100(store: &PgEventStore) -> anyhow::Result<()> {
    const CALLS: u64 = 100;
    let metadata = Metadata::default();
    let started = Instant::now();
    for call in 0..CALLS {
        let events = (0..100)
            .map(|_| NewEvent::from_event(&AccountEvent::Deposited { amount: 1 }, metadata.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        store
            .append(AppendRequest::new(
                BankAccount::TYPE,
                format!("a100-{call}"),
                0,
                events,
            ))
            .await?;
    }
    println!(
        "a100 append of 100 events in one call: {:>8.0} events/s ({:.2} ms per call)",
        per_second(CALLS * 100, started.elapsed()),
        millis(started.elapsed()) / CALLS as f64
    );
    Ok(())
}

fn raw_table(store: &PgEventStore) -> String {
    format!("\"{}\".raw_events", store.schema())
}

/// A table shaped like the events table, with only a primary key.
async fn create_raw_table(store: &PgEventStore, pool: &PgPool) -> anyhow::Result<()> {
    let table = raw_table(store);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             stream_type text NOT NULL, stream_id text NOT NULL, stream_version bigint NOT NULL,
             event_id uuid NOT NULL, event_type text NOT NULL, payload jsonb NOT NULL,
             metadata jsonb NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now())"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// 16 connections, each inserting one event-shaped row per autocommit INSERT.
async fn raw_limit(store: &PgEventStore, pool: &PgPool, duration: Duration) -> anyhow::Result<f64> {
    let table = raw_table(store);
    let insert: Arc<str> = format!(
        "INSERT INTO {table} (stream_type, stream_id, stream_version, event_id, event_type, payload, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)"
    )
    .into();
    let rows = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let (pool, insert, rows) = (pool.clone(), Arc::clone(&insert), Arc::clone(&rows));
        tasks.spawn(async move {
            let stream = format!("raw-{task}");
            let mut version = 0_i64;
            while started.elapsed() < duration {
                version += 1;
                sqlx::query(sqlx::AssertSqlSafe(Arc::clone(&insert)))
                    .bind("bank_account")
                    .bind(&stream)
                    .bind(version)
                    .bind(uuid::Uuid::new_v4())
                    .bind("Deposited")
                    .bind(serde_json::json!({ "amount": 1 }))
                    .bind(serde_json::json!({}))
                    .execute(&pool)
                    .await?;
                rows.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(per_second(rows.load(Ordering::Relaxed), started.elapsed()))
}

/// Counts the round trips of commands on one connection through the counting proxy.
async fn round_trips(store: &PgEventStore, options: &PgConnectOptions) -> anyhow::Result<()> {
    const N: u64 = 100;
    let upstream = (options.get_host(), options.get_port())
        .to_socket_addrs()?
        .next()
        .context("resolve the server address")?;
    let proxy = proxy::RoundTrips::start(upstream).await?;
    let through_proxy = options
        .clone()
        .host(&proxy.addr.ip().to_string())
        .port(proxy.addr.port())
        .ssl_mode(PgSslMode::Disable);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with(through_proxy)
        .await?;
    let counted = PgEventStore::builder(pool.clone())
        .schema(store.schema())
        .build()?;

    println!(
        "rt   round trips per deposit command, counted by a proxy on the wire ({N} sequential commands on one connection):"
    );
    for (label, notify, cache) in [
        ("no cache", PgNotify::Off, false),
        ("warm cache", PgNotify::Off, true),
        (
            "no cache, with NOTIFY after commit",
            PgNotify::AfterCommit,
            false,
        ),
        (
            "warm cache, with NOTIFY after commit",
            PgNotify::AfterCommit,
            true,
        ),
    ] {
        let store = counted.to_builder().notify(notify).build()?;
        let cqrs = pipeline(&store, if cache { 16 } else { 0 }, RetryPolicy::default());
        let id = format!("rt-{label}");
        // Warm up: the first use of each statement on the connection prepares it.
        cqrs.execute(&id, open()).await?;
        for _ in 0..5 {
            cqrs.execute(&id, deposit(1)).await?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (statements, pings) = proxy.counts();
        for _ in 0..N {
            cqrs.execute(&id, deposit(1)).await?;
        }
        // Let the pool's ping of the last release (and a pending NOTIFY) go out.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (statements_after, pings_after) = proxy.counts();
        println!(
            "       {label:<38} {:.2} statement round trips, plus {:.2} pool pings after release",
            (statements_after - statements) as f64 / N as f64,
            (pings_after - pings) as f64 / N as f64,
        );
    }
    pool.close().await;
    Ok(())
}
