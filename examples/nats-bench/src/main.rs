//! Measures the NATS JetStream side of cqrs: the relay's throughput beside a plain
//! JetStream publish loop, and the latency from an append's commit to the commit of the
//! consumer that applied its message in another database schema.
//!
//! Run it, in release mode, from the workspace root:
//!
//! ```text
//! cargo run --release -p example-nats-bench
//! ```
//!
//! It starts a `nats-server -js` of its own on a free port with a temporary store
//! (`NATS_SERVER` if set, else `/usr/sbin/nats-server`, else `nats-server` on the `PATH`)
//! and stops it and removes the store at the end, on an error and on Ctrl-C. It needs
//! PostgreSQL: `DATABASE_URL` (a user allowed to create schemas), by default
//! `postgres://postgres@127.0.0.1:5432/postgres`; it works in three fresh schemas
//! `nats_bench_<random>_{relay,source,sink}` and drops them at the end.
//!
//! What it measures, in one run, each on a JetStream stream of its own (the server's
//! defaults: file storage, a two-minute duplicate window):
//!
//! - **a, pipelined**: `BENCH_EVENTS` messages shaped like the relay's (the same subject
//!   form, JSON payload and `Nats-Msg-Id` header) published with `publish_with_headers`
//!   exactly as the relay's flush does: a batch of the projection runner's batch size
//!   (`PgRunnerTuning::default().batch_size`, 1,000) published, then every
//!   acknowledgement of the batch awaited, then the next batch. The ceiling the relay
//!   could reach on this broker. Messages/s.
//! - **a, one at a time**: `BENCH_SERIAL` such messages, each acknowledged before the next
//!   is published: the broker's round trip, for scale.
//! - **b, relay**: `BENCH_EVENTS` events appended to a fresh store first (1,000 per
//!   append, untimed), then a `PgProjectionRunner` with the `Relay` started and timed
//!   until the stream holds every message (its info polled every 2 ms). Events/s, from
//!   the runner's start and from the first event it handed to the relay. The relay is
//!   registered inside a pass-through view that notes, batch by batch, when the first
//!   event was handed over and when the flush (publishing and awaiting every
//!   acknowledgement) began and ended: so the table also says how much of the time went
//!   to JetStream and how much to the runner around it (the checkpoint's commit, reading
//!   and decoding the log).
//! - **d, consumer**: `BENCH_CONSUME` messages published to a stream of their own, then
//!   a `Consumer` started and timed until it has applied every one (each in a
//!   transaction of its own that adds the amount to its account's row and records the
//!   sequence). Messages/s.
//! - **c, end to end**: the relay (from a fresh store) and a `Consumer` (into a second
//!   fresh schema, its view a table) both running; after one warm-up event has gone
//!   through, a writer appends `BENCH_RATE` events per second for `BENCH_SECONDS`
//!   seconds, each event an append of its own, and notes the instant each append
//!   returned (its commit), keyed by a seq carried in the payload. The consumer's
//!   `apply` inserts the message's row and runs `SELECT pg_notify(<channel>, <seq>)` in
//!   the transaction that records the message's stream sequence; PostgreSQL delivers
//!   the notification only after that commit, and a `PgListener` on the channel notes
//!   its arrival. Latency = arrival - append commit: p50, p90, p99, max, and the count
//!   received. The same pass-through view notes when each event was handed to the
//!   relay and when its batch's acks were all in, and the consumer's `apply` notes when
//!   it was called, so the latency is also split in four legs: the runner waking up and
//!   reading the event, the relay's publish and acks, JetStream's delivery to the
//!   consumer (with the consumer's transaction begun and the sequence claimed; 0 when
//!   the delivery came before the relay had all its acks), and the consumer's insert,
//!   notify and commit. If not every event arrived within `BENCH_DEADLINE` seconds of
//!   the last append, the figures are printed and the program fails.
//!
//! The runner uses its defaults, printed at the start: it wakes on the store's
//! `LISTEN`/`NOTIFY` announcement of each commit and polls the log every `poll_interval`
//! (500 ms) otherwise, which bounds the delay a lost announcement adds.
//!
//! Knobs (environment variables; defaults finish in about a minute on two cores):
//! `BENCH_EVENTS` (20000), `BENCH_SERIAL` (2000), `BENCH_CONSUME` (5000), `BENCH_RATE` (200 per second),
//! `BENCH_SECONDS` (10), `BENCH_DEADLINE` (60 s, also the bound on the relay's drain).

mod consume;
mod latency;
mod relay;
mod server;

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use async_nats::jetstream;
use cqrs_postgres::{PgEventStore, PgRunnerTuning};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgConnection};

use crate::server::NatsServer;

/// The knobs of one run.
#[derive(Debug)]
pub(crate) struct Knobs {
    pub(crate) database_url: String,
    /// Messages of the pipelined loop; events the relay drains.
    pub(crate) events: u64,
    /// Messages of the one-at-a-time loop.
    pub(crate) serial: u64,
    /// Messages the consumer drains.
    pub(crate) consume: u64,
    /// Appends per second in the latency run.
    pub(crate) rate: u32,
    /// Seconds the latency run writes.
    pub(crate) seconds: u32,
    /// How long the relay's drain, and the arrivals after the last append, may take.
    pub(crate) deadline: Duration,
}

impl Knobs {
    fn from_env() -> anyhow::Result<Self> {
        let knobs = Self {
            database_url: std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned()),
            events: number("BENCH_EVENTS", 20_000)?,
            serial: number("BENCH_SERIAL", 2_000)?,
            consume: number("BENCH_CONSUME", 5_000)?,
            rate: number("BENCH_RATE", 200)?,
            seconds: number("BENCH_SECONDS", 10)?,
            deadline: Duration::from_secs(number("BENCH_DEADLINE", 60)?),
        };
        if knobs.events == 0 || knobs.rate == 0 || knobs.seconds == 0 || knobs.consume == 0 {
            bail!("BENCH_EVENTS, BENCH_CONSUME, BENCH_RATE and BENCH_SECONDS must be at least 1");
        }
        Ok(knobs)
    }

    /// Events the latency run writes.
    pub(crate) fn rate_events(&self) -> u64 {
        u64::from(self.rate) * u64::from(self.seconds)
    }
}

fn number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={value} is not a number")),
        Err(_) => Ok(default),
    }
}

/// The `pct`-th percentile (nearest rank) of sorted `sorted`.
pub(crate) fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted
        .get(rank.min(sorted.len()).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[allow(clippy::cast_precision_loss, reason = "a rate to print")]
fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let knobs = Knobs::from_env()?;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let schemas = ["relay", "source", "sink"].map(|s| format!("nats_bench_{tag}_{s}"));
    let server = NatsServer::start().await?;
    let outcome = tokio::select! {
        outcome = run(&knobs, &server, &schemas, &tag) => outcome,
        () = interrupted() => Err(anyhow!("interrupted")),
    };
    let dropped = drop_schemas(&knobs.database_url, &schemas).await;
    drop(server);
    match (outcome, dropped) {
        (Err(error), Err(also)) => {
            eprintln!("(and cleaning up failed: {also:#})");
            Err(error)
        }
        (outcome, dropped) => outcome.and(dropped),
    }
}

/// Resolves on Ctrl-C (never, when the signal cannot be listened to).
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A migrated store in `schema`, on a pool of its own.
async fn store(knobs: &Knobs, schema: &str) -> anyhow::Result<PgEventStore> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&knobs.database_url)
        .await
        .context("cannot connect to DATABASE_URL")?;
    let store = PgEventStore::builder(pool)
        .schema(schema)
        .build()
        .with_context(|| format!("store in schema {schema}"))?;
    store
        .migrate()
        .await
        .with_context(|| format!("cannot migrate the store in schema {schema}"))?;
    Ok(store)
}

async fn drop_schemas(url: &str, schemas: &[String]) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("cannot connect to DATABASE_URL to drop the bench schemas")?;
    // After Ctrl-C a batch may still hold locks for a moment; never wait forever.
    sqlx::query("SET lock_timeout = '10s'")
        .execute(&mut conn)
        .await?;
    for schema in schemas {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(&mut conn)
        .await
        .with_context(|| format!("cannot drop schema {schema}; drop it by hand"))?;
    }
    conn.close().await.ok();
    Ok(())
}

async fn run(
    knobs: &Knobs,
    server: &NatsServer,
    schemas: &[String; 3],
    tag: &str,
) -> anyhow::Result<()> {
    let client = async_nats::connect(&server.url)
        .await
        .context("cannot connect to the nats-server it started")?;
    let nats_version = client.server_info().version;
    let js = jetstream::new(client);
    let drained = store(knobs, &schemas[0]).await?;
    let postgres: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(drained.pool())
        .await?;
    let tuning = PgRunnerTuning::default();
    let batch = u64::try_from(tuning.batch_size)?;
    let sample = serde_json::to_vec(&relay::message_payload("acc-12", 12_345))?;
    println!(
        "nats-bench: nats-server {nats_version} (JetStream, file storage), PostgreSQL {postgres}, {} cores",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "knobs: BENCH_EVENTS={} BENCH_SERIAL={} BENCH_CONSUME={} BENCH_RATE={} BENCH_SECONDS={} BENCH_DEADLINE={}",
        knobs.events,
        knobs.serial,
        knobs.consume,
        knobs.rate,
        knobs.seconds,
        knobs.deadline.as_secs()
    );
    println!(
        "runner (defaults): batch_size {}, poll_interval {} ms, claim_interval {} ms; store notify {:?} \
         (the runner wakes on LISTEN/NOTIFY, polls every poll_interval otherwise)",
        tuning.batch_size,
        tuning.poll_interval.as_millis(),
        tuning.claim_interval.as_millis(),
        drained.notify(),
    );
    println!(
        "messages: subject <prefix>.acc-<n>, a JSON payload of about {} bytes ({}), header Nats-Msg-Id = a UUID",
        sample.len(),
        String::from_utf8_lossy(&sample)
    );
    println!();
    println!(
        "   {:<56} {:>9} {:>9} {:>9}   notes",
        "throughput", "messages", "seconds", "msg/s"
    );

    relay::create_stream(&js, "PUB", "pub").await?;
    let pipelined = relay::publish_pipelined(&js, "pub", knobs.events, batch).await?;
    row(
        "a",
        &format!("publish_with_headers, batches of {batch}, every ack awaited"),
        pipelined.messages,
        pipelined.elapsed,
        &format!(
            "{:.1} ms per batch",
            millis(pipelined.elapsed) / batches(knobs.events, batch)
        ),
    );
    relay::create_stream(&js, "ONE", "one").await?;
    let serial = relay::publish_one_at_a_time(&js, "one", knobs.serial).await?;
    row(
        "a",
        "publish_with_headers, one at a time, ack awaited",
        serial.messages,
        serial.elapsed,
        &format!(
            "round trip p50 {:.3} ms, p99 {:.3} ms",
            millis(relay::median(&serial.round_trips)),
            millis(percentile(&serial.round_trips, 99))
        ),
    );

    relay::fill(&drained, knobs.events, batch).await?;
    let drain = relay::drain(&drained, &js, &server.url, "REL", "rel", knobs).await?;
    if drain.messages != knobs.events {
        bail!(
            "the relay's stream holds {} messages for {} events",
            drain.messages,
            knobs.events
        );
    }
    let times = &drain.times;
    row(
        "b",
        "relay: runner start -> the stream holds every message",
        drain.messages,
        drain.elapsed,
        &format!(
            "first event handed over after {:.0} ms, first message in the stream after {:.0} ms",
            millis(drain.first_handle),
            millis(drain.first_message)
        ),
    );
    row(
        "b",
        "relay: first event handed over -> every message",
        drain.messages,
        drain.elapsed.saturating_sub(drain.first_handle),
        &format!(
            "{:.0} % of the pipelined loop's rate",
            100.0
                * per_second(
                    drain.messages,
                    drain.elapsed.saturating_sub(drain.first_handle)
                )
                / per_second(pipelined.messages, pipelined.elapsed)
        ),
    );
    let active = times
        .last_flush_end
        .zip(times.first_handle)
        .map_or(Duration::ZERO, |(end, begun)| {
            end.saturating_duration_since(begun)
        });
    println!(
        "   the relay's {} batches, first event handed over to the last flush's end, {:.3} s:",
        times.batches,
        active.as_secs_f64()
    );
    for (what, spent) in [
        (
            "flush: publishing the batch and awaiting every ack",
            times.flushing,
        ),
        ("routing the batch's events (handle)", times.routing),
        (
            "between flushes: checkpoint commit, reading + decoding the next window",
            times.between,
        ),
    ] {
        println!(
            "     {what:<72} {:>7.3} s  {:>5.1} %  {:>7.2} ms per batch",
            spent.as_secs_f64(),
            100.0 * spent.as_secs_f64() / active.as_secs_f64().max(f64::MIN_POSITIVE),
            millis(spent) / f64::from(times.batches.max(1)),
        );
    }
    println!();

    let sink = store(knobs, &schemas[2]).await?;
    relay::create_stream(&js, "CON", "con").await?;
    relay::publish_pipelined(&js, "con", knobs.consume, batch).await?;
    let consumed = consume::drain(&sink, &js, "CON", knobs.consume, knobs.deadline).await?;
    row(
        "d",
        "consumer: a transaction per message, applied in order",
        knobs.consume,
        consumed,
        &format!(
            "{:.2} ms per message",
            millis(consumed) / knobs.consume as f64
        ),
    );
    println!();

    let source = store(knobs, &schemas[1]).await?;
    let channel = format!("nats_bench_{tag}");
    let (latency, complete) = latency::run(&source, &sink, &server.url, &channel, knobs).await?;
    println!(
        "c  end to end, one event per append, {} per second for {} s: {} written ({:.1} appends/s), \
         {} received, {} lost, {} heard twice",
        knobs.rate,
        knobs.seconds,
        latency.written,
        per_second(latency.written, latency.writing),
        latency.received,
        latency.written.saturating_sub(latency.received),
        latency.duplicates,
    );
    println!(
        "   {:<66} {:>9} {:>9} {:>9} {:>9}",
        "latency, ms", "p50", "p90", "p99", "max"
    );
    let [woken, published, delivered, applied] = &latency.legs;
    for (what, spans) in [
        (
            "append commit -> the consumer's commit (its pg_notify heard)",
            &latency.latencies,
        ),
        ("  leg: append commit -> event handed to the relay", woken),
        (
            "  leg: handed -> its batch published and every ack in",
            published,
        ),
        (
            "  leg: acked -> the consumer's apply called (0 if before)",
            delivered,
        ),
        (
            "  leg: apply called -> the consumer's commit heard",
            applied,
        ),
    ] {
        println!(
            "   {what:<66} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            millis(percentile(spans, 50)),
            millis(percentile(spans, 90)),
            millis(percentile(spans, 99)),
            millis(spans.last().copied().unwrap_or_default()),
        );
    }
    let t = &latency.times;
    println!(
        "   the relay: {} batches ({:.2} events each), flush {:.2} ms per batch; the consumer applied {} (with the warm-up event)",
        t.batches,
        t.events as f64 / f64::from(t.batches.max(1)),
        millis(t.flushing) / f64::from(t.batches.max(1)),
        latency.consumer_applied,
    );
    complete
}

#[allow(clippy::cast_precision_loss, reason = "a count to print")]
fn batches(messages: u64, batch: u64) -> f64 {
    messages.div_ceil(batch.max(1)) as f64
}

fn row(phase: &str, what: &str, messages: u64, elapsed: Duration, notes: &str) {
    println!(
        "{phase}  {what:<56} {messages:>9} {:>9.3} {:>9.0}   {notes}",
        elapsed.as_secs_f64(),
        per_second(messages, elapsed)
    );
}
