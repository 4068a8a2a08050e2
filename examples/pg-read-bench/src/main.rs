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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{
    Aggregate, Cqrs, CqrsTuning, EventEnvelope, EventStore, Metadata, Position, Projection,
};
use cqrs_postgres::{
    PgEventStore, PgInlineSql, PgProjectionRunner, PgRunnerTuning, PgStoreTuning, PgView,
};
use example_bank_account::{AccountCommand, AccountEvent, BankAccount};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, PgConnection, PgPool};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

/// Peak resident memory of this process, in KiB.
fn peak_memory_kib() -> u64 {
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
#[derive(Debug)]
struct Balances {
    table: String,
    deltas: HashMap<String, (i64, i64)>,
}

impl Balances {
    fn new(schema: &str) -> Self {
        Self {
            table: format!("\"{schema}\".bench_balances_v1"),
            deltas: HashMap::new(),
        }
    }
}

impl Projection for Balances {
    const NAME: &'static str = "bench_balances";
    type Event = AccountEvent;
    type Context = PgConnection;
    type Error = sqlx::Error;

    fn filter() -> cqrs_core::EventFilter {
        cqrs_core::EventFilter::event_types(<AccountEvent as cqrs_core::Event>::TYPES)
            .and_stream_type(BankAccount::TYPE)
    }

    async fn handle(
        &mut self,
        _: &mut PgConnection,
        event: &EventEnvelope<AccountEvent>,
    ) -> Result<(), sqlx::Error> {
        let entry = match self.deltas.get_mut(&event.stream_id) {
            Some(entry) => entry,
            None => self.deltas.entry(event.stream_id.clone()).or_default(),
        };
        match event.payload {
            AccountEvent::Opened { .. } => {}
            AccountEvent::Deposited { amount } => {
                entry.0 += i64::try_from(amount).unwrap_or(i64::MAX);
                entry.1 += 1;
            }
            AccountEvent::Withdrawn { amount } => {
                entry.0 -= i64::try_from(amount).unwrap_or(i64::MAX);
                entry.1 += 1;
            }
        }
        Ok(())
    }
}

impl PgView for Balances {
    async fn setup(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {} (account text PRIMARY KEY, \
             balance bigint NOT NULL, movements bigint NOT NULL)",
            self.table
        )))
        .execute(cx)
        .await?;
        Ok(())
    }

    async fn reset(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!("TRUNCATE {}", self.table)))
            .execute(cx)
            .await?;
        Ok(())
    }

    async fn flush(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.deltas.is_empty() {
            return Ok(());
        }
        let mut accounts = Vec::with_capacity(self.deltas.len());
        let mut balances = Vec::with_capacity(self.deltas.len());
        let mut movements = Vec::with_capacity(self.deltas.len());
        for (account, (balance, moved)) in self.deltas.drain() {
            accounts.push(account);
            balances.push(balance);
            movements.push(moved);
        }
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} AS b (account, balance, movements) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) \
             ON CONFLICT (account) DO UPDATE \
             SET balance = b.balance + excluded.balance, movements = b.movements + excluded.movements",
            self.table
        )))
        .bind(&accounts)
        .bind(&balances)
        .bind(&movements)
        .execute(cx)
        .await?;
        Ok(())
    }

    fn discard(&mut self) {
        self.deltas.clear();
    }
}

/// The same view written by one statement per event, as a first projection usually is.
#[derive(Debug)]
struct PlainBalances {
    table: String,
}

impl Projection for PlainBalances {
    const NAME: &'static str = "bench_plain_balances";
    type Event = AccountEvent;
    type Context = PgConnection;
    type Error = sqlx::Error;

    async fn handle(
        &mut self,
        cx: &mut PgConnection,
        event: &EventEnvelope<AccountEvent>,
    ) -> Result<(), sqlx::Error> {
        let amount = match event.payload {
            AccountEvent::Opened { .. } => 0,
            AccountEvent::Deposited { amount } => i64::try_from(amount).unwrap_or(i64::MAX),
            AccountEvent::Withdrawn { amount } => -i64::try_from(amount).unwrap_or(i64::MAX),
        };
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} AS b (account, balance, movements) VALUES ($1, $2, 1) \
             ON CONFLICT (account) DO UPDATE \
             SET balance = b.balance + excluded.balance, movements = b.movements + 1",
            self.table
        )))
        .bind(&event.stream_id)
        .bind(amount)
        .execute(cx)
        .await?;
        Ok(())
    }
}

/// The balance view kept inline: written in each append's transaction.
#[derive(Debug, Clone)]
struct InlineBalances {
    upsert: Arc<str>,
}

impl Projection for InlineBalances {
    const NAME: &'static str = "bench_inline_balances";
    type Event = AccountEvent;
    type Context = PgConnection;
    type Error = sqlx::Error;

    async fn handle(
        &mut self,
        cx: &mut PgConnection,
        event: &EventEnvelope<AccountEvent>,
    ) -> Result<(), sqlx::Error> {
        let amount = match event.payload {
            AccountEvent::Opened { .. } => 0,
            AccountEvent::Deposited { amount } => i64::try_from(amount).unwrap_or(i64::MAX),
            AccountEvent::Withdrawn { amount } => -i64::try_from(amount).unwrap_or(i64::MAX),
        };
        sqlx::query(AssertSqlSafe(Arc::clone(&self.upsert)))
            .bind(&event.stream_id)
            .bind(amount)
            .execute(cx)
            .await?;
        Ok(())
    }
}

fn options() -> anyhow::Result<PgConnectOptions> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let options: PgConnectOptions = url.parse().context("DATABASE_URL")?;
    Ok(options.disable_statement_logging())
}

async fn pool(max: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .test_before_acquire(false)
        .connect_with(options()?)
        .await
        .context("connect to DATABASE_URL")
}

/// The store the workloads write with: appends batched as `APPEND_BATCHES` says (the
/// store's default when unset).
fn store(pool: &PgPool, schema: &str) -> anyhow::Result<PgEventStore> {
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
async fn raw_insert(
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
async fn fill(store: &PgEventStore, accounts: u64, count: u64) -> anyhow::Result<f64> {
    fill_range(store, accounts, 0, count).await
}

async fn fill_more(
    store: &PgEventStore,
    accounts: u64,
    from: u64,
    count: u64,
) -> anyhow::Result<f64> {
    fill_range(store, accounts, from, count).await
}

async fn fill_range(
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

struct Rebuilt {
    events: u64,
    hwm_kib: u64,
}

/// Rebuilds the balance view from the start of the log in a child process.
async fn rebuild(
    store: &PgEventStore,
    pool: &PgPool,
    schema: &str,
    batch: u64,
    raw_events: f64,
) -> anyhow::Result<Rebuilt> {
    // A fresh start: no checkpoint, no view.
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM \"{schema}\".projections WHERE name = 'bench_balances'"
    )))
    .execute(pool)
    .await?;
    sqlx::query(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS \"{schema}\".bench_balances_v1"
    )))
    .execute(pool)
    .await?;
    let head = store.head().await?;
    let events: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\".events"
    )))
    .fetch_one(pool)
    .await?;
    let events = u64::try_from(events)?;
    // The raw rate is taken just before and just after, and averaged: on a shared
    // machine it moves from minute to minute.
    let raw_before = raw_insert(pool, schema, events, batch, false).await?;
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--rebuild", schema, &head.to_string()])
        .output()
        .await?;
    let raw_after = raw_insert(pool, schema, events, batch, false).await?;
    let raw = f64::midpoint(raw_before, raw_after);
    anyhow::ensure!(
        output.status.success(),
        "the rebuild failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout)?;
    let mut secs = 0.0;
    let mut hwm_kib = 0;
    for field in text.split_whitespace() {
        if let Some(value) = field.strip_prefix("secs=") {
            secs = value.parse()?;
        } else if let Some(value) = field.strip_prefix("hwm_kib=") {
            hwm_kib = value.parse()?;
        }
    }
    let (balance, movements): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT sum(balance)::bigint, sum(movements)::bigint FROM \"{schema}\".bench_balances_v1"
    )))
    .fetch_one(pool)
    .await?;
    let accounts: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(DISTINCT stream_id) FROM \"{schema}\".events"
    )))
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(
        balance == movements && u64::try_from(movements + accounts)? == events,
        "the rebuilt view does not match the log"
    );
    let rate = events as f64 / secs;
    println!(
        "rebuild {events} events into one balance row per account (batches of {batch}): \
         {rate:>9.0} events/s in {secs:.2} s, peak memory {hwm_kib} KiB"
    );
    println!(
        "     raw multi-row INSERT of {events} balance-shaped rows, {batch} per statement and \
         transaction, one connection: {raw:>9.0} rows/s (before {raw_before:.0}, after \
         {raw_after:.0}): the rebuild runs at {:.0} % of it ({:.0} % of the event-shaped rate)",
        100.0 * rate / raw,
        100.0 * rate / raw_events,
    );
    Ok(Rebuilt { events, hwm_kib })
}

/// The child process of [`rebuild`]: runs the projection until it passes `target`.
async fn rebuild_child(schema: &str, target: Position) -> anyhow::Result<()> {
    let pool = pool(4).await?;
    let store = store(&pool, schema)?;
    let batch = usize::try_from(env_u64("BATCH", 5000))?;
    let started = Instant::now();
    let runner = PgProjectionRunner::builder(store)
        .tuning(
            PgRunnerTuning::default()
                .batch_size(batch)
                .claim_interval(Duration::from_millis(10)),
        )
        .view(Balances::new(schema))
        .start()
        .await?;
    runner
        .wait_for(Balances::NAME, target, Duration::from_secs(3600))
        .await?;
    let secs = started.elapsed().as_secs_f64();
    runner.shutdown().await;
    pool.close().await;
    println!("secs={secs} hwm_kib={}", peak_memory_kib());
    Ok(())
}

/// A handler with one statement per event, over the first `count` events.
async fn plain_rebuild(store: &PgEventStore, schema: &str, count: i64) -> anyhow::Result<()> {
    let table = format!("\"{schema}\".bench_plain_balances");
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (account text PRIMARY KEY, balance bigint NOT NULL, movements bigint NOT NULL)"
    )))
    .execute(store.pool())
    .await?;
    let (transaction_id, sequence): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT transaction_id, sequence FROM \"{schema}\".events \
         ORDER BY transaction_id, sequence OFFSET $1 - 1 LIMIT 1"
    )))
    .bind(count)
    .fetch_one(store.pool())
    .await?;
    let target = Position::new(u64::try_from(transaction_id)?, u64::try_from(sequence)?);
    let started = Instant::now();
    let runner = PgProjectionRunner::builder(store.clone())
        .tuning(
            PgRunnerTuning::default()
                .batch_size(usize::try_from(env_u64("BATCH", 5000))?)
                .claim_interval(Duration::from_millis(10)),
        )
        .projection(PlainBalances { table })
        .start()
        .await?;
    runner
        .wait_for(PlainBalances::NAME, target, Duration::from_secs(3600))
        .await?;
    let elapsed = started.elapsed();
    runner.shutdown().await;
    println!(
        "     the same with one UPSERT statement per event (no buffering): {:>9.0} events/s over {count} events",
        per_second(u64::try_from(count)?, elapsed)
    );
    Ok(())
}

struct Load {
    commands: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

/// w1: 16 tasks, each on its own account, Open + `deposits` deposits.
async fn w1(
    cqrs: &Cqrs<BankAccount, PgEventStore>,
    prefix: &str,
    deposits: u64,
) -> anyhow::Result<Load> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let cqrs = cqrs.clone();
        let id = format!("{prefix}-{task}");
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let begun = Instant::now();
            cqrs.execute(
                &id,
                AccountCommand::Open {
                    owner: "bench".to_owned(),
                },
            )
            .await?;
            latencies.push(begun.elapsed());
            for _ in 0..deposits {
                let begun = Instant::now();
                cqrs.execute(&id, AccountCommand::Deposit { amount: 1 })
                    .await?;
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
    Ok(Load {
        commands: latencies.len(),
        elapsed,
        p50: percentile(&latencies, 50),
        p99: percentile(&latencies, 99),
    })
}

/// w4: w1 with an inline balance projection, next to w1 on the same store without it,
/// each without and with the pipeline's aggregate cache. The projection comes twice, each
/// with a table of its own: a handler in Rust (its own statement in the append's
/// transaction) and an inline SQL projection (part of the append statement).
async fn inline(pool: &PgPool, schema: &str, deposits: u64) -> anyhow::Result<()> {
    let store = store(pool, schema)?;
    store.migrate().await?;
    let by_handler = format!("\"{schema}\".bench_inline_balances");
    let by_sql = format!("\"{schema}\".bench_inline_sql_balances");
    for table in [&by_handler, &by_sql] {
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE {table} (account text PRIMARY KEY, balance bigint NOT NULL, movements bigint NOT NULL)"
        )))
        .execute(pool)
        .await?;
    }
    let upsert: Arc<str> = format!(
        "INSERT INTO {by_handler} AS b (account, balance, movements) VALUES ($1, $2, 1) \
         ON CONFLICT (account) DO UPDATE \
         SET balance = b.balance + excluded.balance, movements = b.movements + 1"
    )
    .into();
    let handler_store = store
        .to_builder()
        .inline(InlineBalances { upsert })
        .build()?;
    let sql_store = store.to_builder().inline_sql(PgInlineSql::new(
        "bench_inline_sql_balances",
        format!(
            "INSERT INTO {by_sql} AS b (account, balance, movements) \
             SELECT stream_id, \
                    sum(CASE event_type \
                        WHEN 'Deposited' THEN (payload->>'amount')::bigint \
                        WHEN 'Withdrawn' THEN -(payload->>'amount')::bigint \
                        ELSE 0 END), \
                    count(*) \
             FROM appended WHERE stream_type = '{}' \
             GROUP BY stream_id \
             ON CONFLICT (account) DO UPDATE \
             SET balance = b.balance + excluded.balance, movements = b.movements + excluded.movements",
            BankAccount::TYPE
        ),
    )?).build()?;
    for cache in [false, true] {
        let pipeline = |store: &PgEventStore| {
            Cqrs::<BankAccount, PgEventStore>::builder(store.clone())
                .tuning(CqrsTuning::default().cache(if cache { 1024 } else { 0 }))
                .build()
        };
        let suffix = if cache { "-cached" } else { "" };
        let plain = w1(&pipeline(&store), &format!("plain{suffix}"), deposits).await?;
        let handler = w1(
            &pipeline(&handler_store),
            &format!("handler{suffix}"),
            deposits,
        )
        .await?;
        let sql = w1(&pipeline(&sql_store), &format!("sql{suffix}"), deposits).await?;
        for (label, projection, load) in [
            ("w1  ", "no projection", &plain),
            (
                "w4  ",
                "inline balance projection, a handler in Rust",
                &handler,
            ),
            ("w4  ", "inline balance projection, inline SQL", &sql),
        ] {
            println!(
                "{label} 16 tasks x (Open + {deposits} deposits), own accounts, {projection}, {}: {:>8.0} commands/s  p50 {:.2} ms  p99 {:.2} ms",
                if cache { "with the cache" } else { "no cache" },
                per_second(load.commands as u64, load.elapsed),
                millis(load.p50),
                millis(load.p99),
            );
        }
    }
    for table in [&by_handler, &by_sql] {
        let (balance, movements): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT sum(balance)::bigint, sum(movements)::bigint FROM {table}"
        )))
        .fetch_one(pool)
        .await?;
        anyhow::ensure!(
            u64::try_from(balance)? == 2 * 16 * deposits
                && u64::try_from(movements)? == 2 * 16 * (deposits + 1),
            "the inline view {table} does not match the commands"
        );
    }
    Ok(())
}

/// w1 with the balance projection running: lag from each append's commit to the commit
/// of the batch that applied it.
async fn live_lag(pool: &PgPool, schema: &str, deposits: u64) -> anyhow::Result<()> {
    let store = store(pool, schema)?;
    store.migrate().await?;
    // The projection runs on a small pool of its own, as it would in a worker process:
    // it does not queue behind the writers for connections.
    let worker_pool = self::pool(4).await?;
    let runner = PgProjectionRunner::builder(
        PgEventStore::builder(worker_pool.clone())
            .schema(schema)
            .build()?,
    )
    .tuning(PgRunnerTuning::default().claim_interval(Duration::from_millis(10)))
    .view(Balances::new(schema))
    .start()
    .await?;
    // Wait until it owns the projection.
    runner
        .wait_for(Balances::NAME, Position::START, Duration::from_secs(10))
        .await?;
    for _ in 0..200 {
        if runner
            .status_of(Balances::NAME)
            .await?
            .first()
            .is_some_and(|s| s.owner.is_some())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Checkpoint announcements, timed as they arrive.
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(runner.channel()).await?;
    let announced: Arc<Mutex<Vec<(Instant, Position)>>> = Arc::default();
    let recorder = {
        let announced = Arc::clone(&announced);
        tokio::spawn(async move {
            while let Ok(notification) = listener.recv().await {
                let at = Instant::now();
                let mut parts = notification.payload().rsplit('\t');
                if let Some(Ok(position)) = parts.next().map(str::parse::<Position>)
                    && let Ok(mut announced) = announced.lock()
                {
                    announced.push((at, position));
                }
            }
        })
    };

    // Without the cache: every command loads its stream, as in w1 without it.
    let cqrs = Cqrs::<BankAccount, PgEventStore>::builder(store.clone())
        .tuning(CqrsTuning::default().cache(0))
        .build();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let cqrs = cqrs.clone();
        tasks.spawn(async move {
            let id = format!("w1-{task}");
            let mut appended = Vec::new();
            let outcome = cqrs
                .execute(
                    &id,
                    AccountCommand::Open {
                        owner: "bench".to_owned(),
                    },
                )
                .await?;
            appended.extend(outcome.position.map(|p| (Instant::now(), p)));
            for _ in 0..deposits {
                let outcome = cqrs
                    .execute(&id, AccountCommand::Deposit { amount: 1 })
                    .await?;
                appended.extend(outcome.position.map(|p| (Instant::now(), p)));
            }
            anyhow::Ok(appended)
        });
    }
    let mut appended = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        appended.extend(joined??);
    }
    let elapsed = started.elapsed();
    let last = appended
        .iter()
        .map(|(_, p)| *p)
        .max()
        .unwrap_or(Position::START);
    runner
        .wait_for(Balances::NAME, last, Duration::from_secs(30))
        .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    recorder.abort();
    let announced = announced
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let mut lags: Vec<Duration> = appended
        .iter()
        .filter_map(|(at, position)| {
            announced
                .iter()
                .find(|(_, reached)| reached >= position)
                .map(|(seen, _)| seen.saturating_duration_since(*at))
        })
        .collect();
    lags.sort_unstable();
    println!(
        "lag  w1 ({} commands at {:.0} commands/s) with the projection running: append commit to projection commit p50 {:.2} ms, p99 {:.2} ms ({} batches)",
        appended.len(),
        per_second(appended.len() as u64, elapsed),
        millis(percentile(&lags, 50)),
        millis(percentile(&lags, 99)),
        announced.len(),
    );
    runner.shutdown().await;
    worker_pool.close().await;
    Ok(())
}
