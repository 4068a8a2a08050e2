//! Measures money moved between accounts on PostgreSQL, three ways in one run:
//!
//! - `single`: one command on one account (a refund), the baseline;
//! - `atomic`: a transfer as one decision over both accounts, appended atomically;
//! - `saga`: a transfer started, then carried out by the transfer process (withdraw,
//!   deposit, complete: four commands and the process's own bookkeeping), timed until
//!   every transfer completed.
//!
//! ```text
//! cargo run --release -p example-bank-transfer --bin transfer-bench
//! ```
//!
//! `DATABASE_URL` (default: local), `TRANSFERS` (default 2000), `WRITERS` (concurrent
//! senders, default 8). It works in a schema of its own, dropped at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use cqrs_core::CommandMetadata;
use cqrs_postgres::PgEventStore;
use example_bank_transfer::{
    AccountCommand, Bank, DEFAULT_DATABASE_URL, TransferCommand, connect, run_saga,
    transfer_atomically,
};

const ACCOUNTS: usize = 1_000;

fn env_number(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{name}={value} is not a number")),
        Err(_) => Ok(default),
    }
}

/// Runs `job(i)` for `i` in `0..n` on `writers` concurrent tasks; returns the seconds taken.
async fn timed<F, Fut>(n: usize, writers: usize, job: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for _ in 0..writers {
        let (job, next) = (Arc::clone(&job), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                job(i).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn pair(i: usize) -> (String, String) {
    // Spread over the accounts; never the same one twice in a transfer.
    let from = (i * 7) % ACCOUNTS;
    let to = (from + 1 + (i % (ACCOUNTS - 1))) % ACCOUNTS;
    (format!("acc-{from}"), format!("acc-{to}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let transfers = env_number("TRANSFERS", 2_000)?;
    let writers = env_number("WRITERS", 8)?.max(1);
    let schema = format!(
        "transfer_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let store = connect(&url, &schema).await?;
    let result = run(&store, transfers, writers).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(store.pool())
    .await
    .context("cannot drop the bench schema")?;
    result
}

async fn run(store: &PgEventStore, transfers: usize, writers: usize) -> anyhow::Result<()> {
    let bank = Bank::new(store.clone());
    let opening = timed(ACCOUNTS, writers, {
        let bank = bank.clone();
        move |i| {
            let bank = bank.clone();
            async move {
                bank.accounts
                    .dispatch(AccountCommand::Open {
                        account: format!("acc-{i}"),
                        balance: 1_000_000_000,
                    })
                    .await?;
                Ok(())
            }
        }
    })
    .await?;
    println!(
        "transfer-bench: {transfers} transfers over {ACCOUNTS} accounts, {writers} writers \
         (accounts opened in {opening:.2} s)"
    );

    let single = timed(transfers, writers, {
        let bank = bank.clone();
        move |i| {
            let bank = bank.clone();
            async move {
                let (account, _) = pair(i);
                bank.accounts
                    .dispatch(AccountCommand::Refund {
                        account,
                        transfer: format!("single-{i}"),
                        amount: 1,
                    })
                    .await?;
                Ok(())
            }
        }
    })
    .await?;
    report(
        "single  (1 command, 1 stream)",
        transfers,
        single,
        "commands",
    );

    let atomic = timed(transfers, writers, {
        let bank = bank.clone();
        move |i| {
            let bank = bank.clone();
            async move {
                let (from, to) = pair(i);
                transfer_atomically(
                    &bank.accounts,
                    &format!("atomic-{i}"),
                    &from,
                    &to,
                    1,
                    CommandMetadata::new(),
                )
                .await?;
                Ok(())
            }
        }
    })
    .await?;
    report(
        "atomic  (1 unit, 2 streams)",
        transfers,
        atomic,
        "transfers",
    );

    let runner = run_saga(store.clone()).await?;
    let started = Instant::now();
    let starting = timed(transfers, writers, {
        let bank = bank.clone();
        move |i| {
            let bank = bank.clone();
            async move {
                let (from, to) = pair(i);
                bank.transfers
                    .dispatch(TransferCommand::Start {
                        transfer: format!("saga-{i}"),
                        from,
                        to,
                        amount: 1,
                        deadline_ms: 600_000,
                    })
                    .await?;
                Ok(())
            }
        }
    })
    .await?;
    let done = wait_completed(store, transfers).await?;
    let elapsed = started.elapsed().as_secs_f64();
    runner.shutdown().await;
    report(
        "saga    (5 commands, 3 streams)",
        transfers,
        elapsed,
        "transfers",
    );
    println!("        (starting them took {starting:.2} s; {done} completed)");
    Ok(())
}

async fn wait_completed(store: &PgEventStore, transfers: usize) -> anyhow::Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut tx = store.begin_in_schema().await?;
        let (completed,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM events WHERE stream_type = 'transfer' \
             AND event_type = 'TransferCompleted'",
        )
        .fetch_one(&mut *tx)
        .await?;
        drop(tx);
        if completed >= i64::try_from(transfers)? {
            return Ok(completed);
        }
        if Instant::now() > deadline {
            bail!("only {completed} of {transfers} transfers completed in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn report(what: &str, n: usize, seconds: f64, unit: &str) {
    #[allow(clippy::cast_precision_loss, reason = "a rate to print")]
    let rate = n as f64 / seconds;
    println!("{what}: {rate:>8.0} {unit}/s ({n} in {seconds:.2} s)");
}
