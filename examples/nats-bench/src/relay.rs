//! The messages, the relay's route, a pass-through view timing the relay's batches, and
//! the throughput measurements: plain publish loops and the relay draining a log.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{EventEnvelope, EventFilter, EventStore, Projection};
use cqrs_nats::{Message, Raw, Relay, RelayError, Route};
use cqrs_postgres::sqlx::PgConnection;
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgView};
use serde_json::{Value, json};

use crate::{Knobs, percentile};

/// The stream type of every event appended.
pub(crate) const STREAM_TYPE: &str = "account";

/// The aggregate stream of the `seq`-th event when they are spread over `streams`.
pub(crate) fn stream_id(seq: u64, streams: u64) -> String {
    format!("acc-{}", seq % streams.max(1))
}

/// The stored event carrying `seq`.
pub(crate) fn event(seq: u64) -> NewEvent {
    NewEvent::new(
        "Deposited",
        1,
        json!({ "seq": seq, "amount": seq % 1000 + 1 }),
    )
}

/// The integration message for the `seq`-th event of `stream`: what the route makes of
/// it, byte for byte (the map's keys are sorted either way).
pub(crate) fn message_payload(stream: &str, seq: u64) -> Value {
    json!({ "account": stream, "seq": seq, "amount": seq % 1000 + 1 })
}

/// Relays every event to `<prefix>.<stream id>` with its account, seq and amount.
pub(crate) struct BenchRoute {
    pub(crate) prefix: &'static str,
}

impl Route for BenchRoute {
    const NAME: &'static str = "nats_bench_relay";

    fn route(&self, event: &EventEnvelope<Raw>) -> Option<Message> {
        let payload = &event.payload.payload;
        Some(Message::new(
            format!("{}.{}", self.prefix, event.stream_id),
            json!({
                "account": event.stream_id,
                "seq": payload["seq"].clone(),
                "amount": payload["amount"].clone(),
            }),
        ))
    }
}

/// Where a relay's time went, batch by batch, as [`Timed`] saw it.
#[derive(Debug, Default, Clone)]
pub(crate) struct BatchTimes {
    /// Batches flushed.
    pub(crate) batches: u32,
    /// Events handed to the relay.
    pub(crate) events: u64,
    /// The first event handed to the relay.
    pub(crate) first_handle: Option<Instant>,
    /// The end of the last flush.
    pub(crate) last_flush_end: Option<Instant>,
    /// Summed over batches: the first event handled to the start of the flush (routing
    /// the batch's events).
    pub(crate) routing: Duration,
    /// Summed over batches: the flush (publishing the batch and awaiting every ack).
    pub(crate) flushing: Duration,
    /// Summed: the end of a flush to the first event of the next batch (the checkpoint's
    /// commit, reading and decoding the next window when it was not read ahead, and any
    /// wait for new events).
    pub(crate) between: Duration,
    /// When the event carrying each seq (index) was handed to the relay: the runner had
    /// woken up, read and decoded it. Empty unless asked for.
    pub(crate) handed: Vec<Option<Instant>>,
    /// When the flush publishing the event carrying each seq (index) had every ack.
    pub(crate) acked: Vec<Option<Instant>>,
    batch_begun: Option<Instant>,
    batch_seqs: Vec<usize>,
}

/// The relay, unchanged, with the time of each batch's phases noted on the way.
pub(crate) struct Timed<R> {
    relay: Relay<R>,
    times: Arc<Mutex<BatchTimes>>,
}

impl<R: Route> Timed<R> {
    /// `relay`, noting its batches' phases, and the instants each event is handed over
    /// and acknowledged for seqs below `stamped`.
    pub(crate) fn new(relay: Relay<R>, stamped: usize) -> (Self, Arc<Mutex<BatchTimes>>) {
        let times = Arc::new(Mutex::new(BatchTimes {
            handed: vec![None; stamped],
            acked: vec![None; stamped],
            ..BatchTimes::default()
        }));
        (
            Self {
                relay,
                times: Arc::clone(&times),
            },
            times,
        )
    }

    fn times(&self) -> std::sync::MutexGuard<'_, BatchTimes> {
        self.times.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<R: Route> Projection for Timed<R> {
    const NAME: &'static str = <Relay<R> as Projection>::NAME;
    const VERSION: u32 = <Relay<R> as Projection>::VERSION;
    type Event = Raw;
    type Context = PgConnection;
    type Error = RelayError;

    fn filter() -> EventFilter {
        <Relay<R> as Projection>::filter()
    }

    fn handle(
        &mut self,
        cx: &mut PgConnection,
        event: &EventEnvelope<Raw>,
    ) -> impl Future<Output = Result<(), RelayError>> + Send {
        {
            let now = Instant::now();
            let mut times = self.times();
            times.events += 1;
            times.first_handle.get_or_insert(now);
            if times.batch_begun.is_none() {
                times.batch_begun = Some(now);
                if let Some(end) = times.last_flush_end {
                    times.between += now.saturating_duration_since(end);
                }
            }
            let seq = event.payload.payload["seq"].as_u64();
            if let Some(seq) = seq.and_then(|s| usize::try_from(s).ok())
                && let Some(slot) = times.handed.get_mut(seq)
            {
                *slot = Some(now);
                times.batch_seqs.push(seq);
            }
        }
        self.relay.handle(cx, event)
    }
}

impl<R: Route> PgView for Timed<R> {
    fn setup(
        &mut self,
        cx: &mut PgConnection,
    ) -> impl Future<Output = Result<(), RelayError>> + Send {
        self.relay.setup(cx)
    }

    fn reset(
        &mut self,
        cx: &mut PgConnection,
    ) -> impl Future<Output = Result<(), RelayError>> + Send {
        self.relay.reset(cx)
    }

    fn prepare(
        &mut self,
        cx: &mut PgConnection,
        events: &[&EventEnvelope<Raw>],
    ) -> impl Future<Output = Result<(), RelayError>> + Send {
        self.relay.prepare(cx, events)
    }

    async fn flush(&mut self, cx: &mut PgConnection) -> Result<(), RelayError> {
        let begun = Instant::now();
        let outcome = self.relay.flush(cx).await;
        let end = Instant::now();
        let mut times = self.times();
        if let Some(batch_begun) = times.batch_begun.take() {
            times.routing += begun.saturating_duration_since(batch_begun);
            times.batches += 1;
            times.flushing += end.saturating_duration_since(begun);
            times.last_flush_end = Some(end);
        }
        let seqs = std::mem::take(&mut times.batch_seqs);
        if outcome.is_ok() {
            for seq in seqs {
                if let Some(slot) = times.acked.get_mut(seq) {
                    *slot = Some(end);
                }
            }
        }
        outcome
    }

    fn discard(&mut self) {
        let mut times = self.times();
        times.batch_begun = None;
        times.batch_seqs.clear();
        drop(times);
        self.relay.discard();
    }

    fn activate(
        &mut self,
        cx: &mut PgConnection,
    ) -> impl Future<Output = Result<(), RelayError>> + Send {
        self.relay.activate(cx)
    }
}

/// A stream named `name` taking `<prefix>.>`, with the server's defaults otherwise (file
/// storage, a two-minute duplicate window).
pub(crate) async fn create_stream(
    js: &jetstream::Context,
    name: &str,
    prefix: &str,
) -> anyhow::Result<jetstream::stream::Stream> {
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{prefix}.>")],
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot create the JetStream stream {name}"))
}

async fn stream_messages(stream: &mut jetstream::stream::Stream) -> anyhow::Result<u64> {
    Ok(stream
        .info()
        .await
        .context("cannot read the stream's info")?
        .state
        .messages)
}

/// A plain publish loop's result.
#[derive(Debug)]
pub(crate) struct Publish {
    pub(crate) messages: u64,
    pub(crate) elapsed: Duration,
    /// One at a time only: each publish-and-ack's round trip, sorted.
    pub(crate) round_trips: Vec<Duration>,
}

/// Publishes `messages` messages shaped like the relay's to `<prefix>.acc-<n>`, as the
/// relay's flush does: each batch of `batch` published with its `Nats-Msg-Id`, then every
/// acknowledgement of the batch awaited. One batch more goes first, untimed, so the
/// connection and the stream are warm as the relay's are after its first batch.
pub(crate) async fn publish_pipelined(
    js: &jetstream::Context,
    prefix: &str,
    messages: u64,
    batch: u64,
) -> anyhow::Result<Publish> {
    let batch = batch.max(1);
    publish_batches(js, &format!("{prefix}.warm"), 0, batch, batch).await?;
    let started = Instant::now();
    publish_batches(js, prefix, 0, messages, batch).await?;
    Ok(Publish {
        messages,
        elapsed: started.elapsed(),
        round_trips: Vec::new(),
    })
}

async fn publish_batches(
    js: &jetstream::Context,
    prefix: &str,
    from: u64,
    to: u64,
    batch: u64,
) -> anyhow::Result<()> {
    let mut seq = from;
    while seq < to {
        let end = to.min(seq + batch);
        let mut acks = Vec::with_capacity(usize::try_from(end - seq).unwrap_or(0));
        for seq in seq..end {
            let stream = stream_id(seq / batch, u64::MAX);
            let payload = serde_json::to_vec(&message_payload(&stream, seq))?;
            let id = uuid::Uuid::new_v4().to_string();
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            let ack = js
                .publish_with_headers(format!("{prefix}.{stream}"), headers, payload.into())
                .await
                .context("publish")?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.context("a publish was not acknowledged")?;
        }
        seq = end;
    }
    Ok(())
}

/// Publishes `messages` messages like [`publish_pipelined`], each acknowledged before the
/// next is published.
pub(crate) async fn publish_one_at_a_time(
    js: &jetstream::Context,
    prefix: &str,
    messages: u64,
) -> anyhow::Result<Publish> {
    let mut round_trips = Vec::with_capacity(usize::try_from(messages).unwrap_or(0));
    let started = Instant::now();
    for seq in 0..messages {
        let begun = Instant::now();
        let stream = stream_id(seq, 20);
        let payload = serde_json::to_vec(&message_payload(&stream, seq))?;
        let id = uuid::Uuid::new_v4().to_string();
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        js.publish_with_headers(format!("{prefix}.{stream}"), headers, payload.into())
            .await
            .context("publish")?
            .await
            .context("a publish was not acknowledged")?;
        round_trips.push(begun.elapsed());
    }
    let elapsed = started.elapsed();
    round_trips.sort_unstable();
    Ok(Publish {
        messages,
        elapsed,
        round_trips,
    })
}

/// Appends `events` events to `store`, `batch` per append (each append one new stream),
/// untimed.
pub(crate) async fn fill(store: &PgEventStore, events: u64, batch: u64) -> anyhow::Result<()> {
    let batch = batch.max(1);
    let mut seq = 0;
    while seq < events {
        let end = events.min(seq + batch);
        let stream = stream_id(seq / batch, u64::MAX);
        store
            .append(AppendRequest::new(
                STREAM_TYPE,
                stream,
                0,
                (seq..end).map(event).collect(),
            ))
            .await
            .context("cannot append the relay's events")?;
        seq = end;
    }
    Ok(())
}

/// The relay draining a log.
#[derive(Debug)]
pub(crate) struct Drain {
    pub(crate) messages: u64,
    /// The runner's start to the stream holding every message.
    pub(crate) elapsed: Duration,
    /// The runner's start to the first message seen in the stream.
    pub(crate) first_message: Duration,
    /// The runner's start to the first event handed to the relay.
    pub(crate) first_handle: Duration,
    pub(crate) times: BatchTimes,
}

/// Starts a runner relaying `store`'s `events` events (already appended) to the stream
/// `name` (taking `prefix.>`), and times it until the stream holds them all.
pub(crate) async fn drain(
    store: &PgEventStore,
    js: &jetstream::Context,
    nats_url: &str,
    name: &str,
    prefix: &'static str,
    knobs: &Knobs,
) -> anyhow::Result<Drain> {
    let mut stream = create_stream(js, name, prefix).await?;
    let client = async_nats::connect(nats_url)
        .await
        .context("the relay's NATS connection")?;
    let (view, times) = Timed::new(Relay::new(jetstream::new(client), BenchRoute { prefix }), 0);
    let target = knobs.events;
    let started = Instant::now();
    let runner = PgProjectionRunner::builder(store.clone())
        .view(view)
        .start()
        .await
        .context("cannot start the relay's runner")?;
    let watched = async {
        let mut first_message = None;
        loop {
            let now = stream_messages(&mut stream).await?;
            if now > 0 && first_message.is_none() {
                first_message = Some(started.elapsed());
            }
            if now >= target {
                return anyhow::Ok((started.elapsed(), first_message.unwrap_or_default()));
            }
            if started.elapsed() > knobs.deadline {
                bail!(
                    "the relay put only {now} of {target} messages in the stream within {} s",
                    knobs.deadline.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    .await;
    runner.shutdown().await;
    let (elapsed, first_message) = watched?;
    let messages = stream_messages(&mut stream).await?;
    let times = times.lock().unwrap_or_else(PoisonError::into_inner).clone();
    Ok(Drain {
        messages,
        elapsed,
        first_message,
        first_handle: times
            .first_handle
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(started)),
        times,
    })
}

/// The median of sorted `round_trips`, for a line of the table.
pub(crate) fn median(round_trips: &[Duration]) -> Duration {
    percentile(round_trips, 50)
}
