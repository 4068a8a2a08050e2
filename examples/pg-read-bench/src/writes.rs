//! `lag`, `w1` and `w4`: commands through the pipeline, with the projection running or
//! inline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cqrs_core::{Aggregate, Cqrs, CqrsTuning, Position, Projection};
use cqrs_postgres::{PgEventStore, PgInlineSql, PgProjectionRunner, PgRunnerTuning};
use example_bank_account::{AccountCommand, BankAccount};
use sqlx::postgres::PgListener;
use sqlx::{AssertSqlSafe, PgPool};

use crate::views::{Balances, InlineBalances};
use crate::{millis, per_second, percentile, pool, store};

pub(crate) struct Load {
    commands: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

/// w1: 16 tasks, each on its own account, Open + `deposits` deposits.
pub(crate) async fn w1(
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
pub(crate) async fn inline(pool: &PgPool, schema: &str, deposits: u64) -> anyhow::Result<()> {
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
        .inline(InlineBalances {
            table: by_handler.as_str().into(),
            upsert,
        })
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
pub(crate) async fn live_lag(pool: &PgPool, schema: &str, deposits: u64) -> anyhow::Result<()> {
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
        .wait_for::<Balances>(Position::START, Duration::from_secs(10))
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
        .wait_for::<Balances>(last, Duration::from_secs(30))
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
