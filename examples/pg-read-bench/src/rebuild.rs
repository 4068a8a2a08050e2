//! `rebuild`: the balance view replayed from the start of the log, in a child process.

use std::time::{Duration, Instant};

use cqrs_core::{EventStore, Position};
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgRunnerTuning};
use sqlx::{AssertSqlSafe, PgPool};

use crate::views::{Balances, PlainBalances};
use crate::{env_u64, peak_memory_kib, per_second, pool, raw_insert, store};

pub(crate) struct Rebuilt {
    pub(crate) events: u64,
    pub(crate) hwm_kib: u64,
}

/// Rebuilds the balance view from the start of the log in a child process.
pub(crate) async fn rebuild(
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
pub(crate) async fn rebuild_child(schema: &str, target: Position) -> anyhow::Result<()> {
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
        .wait_for::<Balances>(target, Duration::from_secs(3600))
        .await?;
    let secs = started.elapsed().as_secs_f64();
    runner.shutdown().await;
    pool.close().await;
    println!("secs={secs} hwm_kib={}", peak_memory_kib());
    Ok(())
}

/// A handler with one statement per event, over the first `count` events.
pub(crate) async fn plain_rebuild(
    store: &PgEventStore,
    schema: &str,
    count: i64,
) -> anyhow::Result<()> {
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
        .wait_for::<PlainBalances>(target, Duration::from_secs(3600))
        .await?;
    let elapsed = started.elapsed();
    runner.shutdown().await;
    println!(
        "     the same with one UPSERT statement per event (no buffering): {:>9.0} events/s over {count} events",
        per_second(u64::try_from(count)?, elapsed)
    );
    Ok(())
}
