//! d: how fast a `Consumer` drains a stream into PostgreSQL, one transaction and one
//! message outstanding at a time (it applies in stream order).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use cqrs_nats::{Consume, Consumer, Incoming};
use cqrs_postgres::PgEventStore;
use cqrs_postgres::sqlx::{self, PgConnection};

/// Counts each message's amount into one row per account.
struct Totals;

impl Consume for Totals {
    const NAME: &'static str = "nats_bench_totals";
    type Error = sqlx::Error;

    async fn apply(
        &mut self,
        cx: &mut PgConnection,
        message: &Incoming,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO bench_totals (account, total) VALUES ($1, $2) \
             ON CONFLICT (account) DO UPDATE SET total = bench_totals.total + EXCLUDED.total",
        )
        .bind(message.payload["account"].as_str())
        .bind(message.payload["amount"].as_i64())
        .execute(&mut *cx)
        .await?;
        Ok(())
    }
}

/// Drains `stream` (holding `messages`) into `sink`: the time from the consumer's start
/// to its last commit.
pub(crate) async fn drain(
    sink: &PgEventStore,
    js: &jetstream::Context,
    stream: &str,
    messages: u64,
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let mut tx = sink.begin_in_schema().await?;
    sqlx::query("CREATE TABLE bench_totals (account text PRIMARY KEY, total bigint NOT NULL)")
        .execute(&mut *tx)
        .await
        .context("the consumer's view")?;
    tx.commit().await?;
    let consumer = Consumer::new(sink.clone(), js.clone(), stream, Totals);
    let counts = consumer.counts();
    let started = Instant::now();
    let task = tokio::spawn(consumer.run());
    while counts.applied() < messages {
        if started.elapsed() > deadline || task.is_finished() {
            task.abort();
            bail!(
                "the consumer applied {} of {messages} messages",
                counts.applied()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    task.abort();
    Ok(elapsed)
}
