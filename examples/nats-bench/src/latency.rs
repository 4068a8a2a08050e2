//! End-to-end latency: from an append's commit to the commit, in the receiving
//! service's database, of the consumer's transaction that applied its message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use cqrs_core::EventStore;
use cqrs_core::store::AppendRequest;
use cqrs_nats::{Consume, Consumer, Incoming, Relay};
use cqrs_postgres::sqlx::{self, PgConnection};
use cqrs_postgres::{PgEventStore, PgProjectionRunner};
use sqlx::postgres::PgListener;
use tokio::task::JoinHandle;

use crate::Knobs;
use crate::relay::{BatchTimes, BenchRoute, STREAM_TYPE, Timed, create_stream, event, stream_id};

/// The aggregate streams the writer spreads its appends over.
const STREAMS: u64 = 16;

/// The consumer's view: one row per message, then a notification of its seq on
/// `channel`, in the transaction that records the message's stream sequence. PostgreSQL
/// delivers the notification only once that transaction has committed.
struct Sink {
    channel: String,
    /// When `apply` was called for each seq (the consumer has begun its transaction and
    /// claimed the message's sequence by then).
    applying: Arc<Mutex<Vec<Option<Instant>>>>,
}

impl Consume for Sink {
    const NAME: &'static str = "nats_bench_sink";
    type Error = sqlx::Error;

    async fn apply(
        &mut self,
        cx: &mut PgConnection,
        message: &Incoming,
    ) -> Result<(), sqlx::Error> {
        let now = Instant::now();
        // A message without a seq fails the insert (NOT NULL) rather than vanishing.
        let seq = message.payload["seq"].as_i64();
        if let Some(slot) = seq.and_then(|s| usize::try_from(s).ok()) {
            let mut applying = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(at) = applying.get_mut(slot) {
                *at = Some(now);
            }
        }
        sqlx::query("INSERT INTO received (seq, stream_sequence) VALUES ($1, $2)")
            .bind(seq)
            .bind(i64::try_from(message.stream_sequence).unwrap_or(i64::MAX))
            .execute(&mut *cx)
            .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(seq.map(|s| s.to_string()))
            .execute(&mut *cx)
            .await?;
        Ok(())
    }
}

/// A spawned task, aborted when dropped.
struct Task<T>(JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the listener heard: the arrival of each seq (index), and what did not fit.
struct Arrivals {
    at: Mutex<Vec<Option<Instant>>>,
    /// Distinct seqs arrived.
    count: AtomicU64,
    /// Seqs that arrived a second time.
    duplicates: AtomicU64,
}

/// The latency run's figures.
#[derive(Debug)]
pub(crate) struct Latency {
    pub(crate) written: u64,
    pub(crate) received: u64,
    pub(crate) duplicates: u64,
    /// The writer's time, first append to last commit.
    pub(crate) writing: Duration,
    /// Append commit to the commit heard, sorted.
    pub(crate) latencies: Vec<Duration>,
    /// The legs of [`latencies`](Self::latencies), each sorted: append commit to the
    /// event handed to the relay, to its batch acknowledged, to the consumer's `apply`
    /// called, to the consumer's commit heard.
    pub(crate) legs: [Vec<Duration>; 4],
    pub(crate) times: BatchTimes,
    pub(crate) consumer_applied: u64,
}

/// Runs the relay (from `source`) and a consumer (into `sink`) on the stream `E2E`, and a
/// writer appending one event per append at the knobs' rate; returns the latencies of
/// what arrived, and whether everything did within the deadline.
pub(crate) async fn run(
    source: &PgEventStore,
    sink: &PgEventStore,
    nats_url: &str,
    channel: &str,
    knobs: &Knobs,
) -> anyhow::Result<(Latency, anyhow::Result<()>)> {
    let js = jetstream::new(
        async_nats::connect(nats_url)
            .await
            .context("the consumer's NATS connection")?,
    );
    create_stream(&js, "E2E", "e2e").await?;
    {
        let mut tx = sink.begin_in_schema().await?;
        sqlx::query(
            "CREATE TABLE received (seq bigint PRIMARY KEY, stream_sequence bigint NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        )
        .execute(&mut *tx)
        .await
        .context("cannot create the consumer's view")?;
        tx.commit()
            .await
            .context("cannot create the consumer's view")?;
    }
    let total = knobs.rate_events();
    let slots = usize::try_from(total + 1).context("too many events for this machine")?;
    let arrivals = Arc::new(Arrivals {
        at: Mutex::new(vec![None; slots]),
        count: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
    });
    let mut listener = PgListener::connect(&knobs.database_url)
        .await
        .context("the listener's connection to DATABASE_URL")?;
    listener.listen(channel).await.context("LISTEN")?;
    let client = async_nats::connect(nats_url)
        .await
        .context("the relay's NATS connection")?;
    let (view, times) = Timed::new(
        Relay::new(jetstream::new(client), BenchRoute { prefix: "e2e" }),
        slots,
    );
    let runner = PgProjectionRunner::builder(source.clone())
        .view(view)
        .start()
        .await
        .context("cannot start the relay's runner")?;

    // Stopped when dropped, also when the run is cut short (an error, Ctrl-C).
    let listening = Task(tokio::spawn(listen(listener, Arc::clone(&arrivals))));
    let applying = Arc::new(Mutex::new(vec![None; slots]));
    let consumer = Consumer::new(
        sink.clone(),
        js,
        "E2E",
        Sink {
            channel: channel.to_owned(),
            applying: Arc::clone(&applying),
        },
    );
    let counts = consumer.counts();
    let mut consuming = Task(tokio::spawn(consumer.run()));

    let outcome = write_and_wait(source, &arrivals, &consuming.0, &listening.0, total, knobs).await;
    runner.shutdown().await;
    drop(listening);
    let stopped = if consuming.0.is_finished() {
        match (&mut consuming.0).await {
            Ok(Ok(())) => Some("the consumer's deliveries ended".to_owned()),
            Ok(Err(error)) => Some(format!("the consumer failed: {error}")),
            Err(error) => Some(format!("the consumer's task failed: {error}")),
        }
    } else {
        None
    };
    drop(consuming);
    let with_why = |error: anyhow::Error| match &stopped {
        Some(why) => error.context(why.clone()),
        None => error,
    };
    let (writing, complete) = outcome.map_err(with_why)?;
    let complete = complete.map_err(with_why);

    let heard = arrivals.at.lock().unwrap_or_else(PoisonError::into_inner);
    let applying = applying.lock().unwrap_or_else(PoisonError::into_inner);
    let times = times.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let latencies = between(&writing.committed, &heard);
    let legs = [
        between(&writing.committed, &times.handed),
        between(&times.handed, &times.acked),
        between(&times.acked, &applying),
        between(&applying, &heard),
    ];
    let latency = Latency {
        written: total,
        received: arrivals.count.load(Ordering::Relaxed).saturating_sub(1),
        duplicates: arrivals.duplicates.load(Ordering::Relaxed),
        writing: writing.elapsed,
        latencies,
        legs,
        times,
        consumer_applied: counts.applied(),
    };
    Ok((latency, complete))
}

/// For each seq but the warm-up's stamped in both, the time from `from` to `to`, sorted.
fn between(from: &[Option<Instant>], to: &[Option<Instant>]) -> Vec<Duration> {
    let mut spans: Vec<Duration> = from
        .iter()
        .zip(to)
        .skip(1)
        .filter_map(|(from, to)| Some(to.as_ref()?.saturating_duration_since(*from.as_ref()?)))
        .collect();
    spans.sort_unstable();
    spans
}

/// Stamps each notification's seq with its arrival.
async fn listen(mut listener: PgListener, arrivals: Arc<Arrivals>) -> anyhow::Result<()> {
    loop {
        let notification = listener.recv().await.context("the listener failed")?;
        let now = Instant::now();
        let Ok(seq) = notification.payload().parse::<usize>() else {
            continue;
        };
        let mut at = arrivals.at.lock().unwrap_or_else(PoisonError::into_inner);
        match at.get_mut(seq) {
            Some(slot @ None) => {
                *slot = Some(now);
                arrivals.count.fetch_add(1, Ordering::Relaxed);
            }
            Some(Some(_)) => {
                arrivals.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
    }
}

struct Writing {
    /// The commit of each seq's append (index 0: the warm-up event).
    committed: Vec<Option<Instant>>,
    elapsed: Duration,
}

/// A warm-up event (seq 0) through the whole path, then `total` appends at the knobs'
/// rate, then the wait for every one of them to arrive (its outcome returned beside the
/// appends' commits).
async fn write_and_wait(
    store: &PgEventStore,
    arrivals: &Arrivals,
    consuming: &JoinHandle<Result<(), cqrs_nats::ConsumerError>>,
    listening: &JoinHandle<anyhow::Result<()>>,
    total: u64,
    knobs: &Knobs,
) -> anyhow::Result<(Writing, anyhow::Result<()>)> {
    let mut committed = vec![None; usize::try_from(total + 1)?];
    let mut versions = vec![0_u64; usize::try_from(STREAMS)?];
    let mut append = async |seq: u64| -> anyhow::Result<Instant> {
        let slot = usize::try_from(seq % STREAMS)?;
        store
            .append(AppendRequest::new(
                STREAM_TYPE,
                stream_id(seq, STREAMS),
                versions[slot],
                vec![event(seq)],
            ))
            .await
            .context("the writer's append failed")?;
        let now = Instant::now();
        versions[slot] += 1;
        Ok(now)
    };

    // Everything up and connected before the clock starts: the runner has taken the
    // relay, the durable consumer exists, the connections are open.
    committed[0] = Some(append(0).await?);
    wait_for(arrivals, 1, consuming, listening, knobs.deadline)
        .await
        .context("the warm-up event did not arrive")?;

    let mut ticker = tokio::time::interval(Duration::from_secs(1) / knobs.rate);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    for seq in 1..=total {
        ticker.tick().await;
        let slot = usize::try_from(seq)?;
        committed[slot] = Some(append(seq).await?);
    }
    let elapsed = started.elapsed();
    let complete = wait_for(arrivals, total + 1, consuming, listening, knobs.deadline).await;
    Ok((Writing { committed, elapsed }, complete))
}

/// Waits until `count` distinct seqs arrived, the consumer or the listener stopped, or
/// `deadline` passed.
async fn wait_for(
    arrivals: &Arrivals,
    count: u64,
    consuming: &JoinHandle<Result<(), cqrs_nats::ConsumerError>>,
    listening: &JoinHandle<anyhow::Result<()>>,
    deadline: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let arrived = arrivals.count.load(Ordering::Relaxed);
        if arrived >= count {
            return Ok(());
        }
        if consuming.is_finished() {
            bail!("the consumer stopped (after {arrived} of {count} messages)");
        }
        if listening.is_finished() {
            bail!("the listener stopped (after {arrived} of {count} notifications)");
        }
        if started.elapsed() > deadline {
            bail!(
                "only {arrived} of {count} messages reached the consumer's commit within {} s \
                 of the last append (BENCH_DEADLINE)",
                deadline.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
