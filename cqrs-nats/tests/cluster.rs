//! The relay and the consumer against a three-node JetStream cluster (started by the test
//! on 127.0.0.1, each node with its own ports, temporary store and log): while events are
//! being appended, relayed and consumed, the node leading the stream (and, arranged
//! before the run where the cluster allows, its durable consumer too) is killed with
//! SIGKILL. The stream and the consumer fail over to the two nodes left and the clients
//! (connected to all three) reconnect; at the end every routed event is in the stream
//! once (no two messages share a `Nats-Msg-Id`) and in the consumer's view once (a view
//! counting each message id's applications, so a loss or a double shows). A line sums up
//! the run: where the kill landed, how long the stream had no leader, the longest the
//! relay and the consumer stood still, what was published or delivered again.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::{self, stream};
use common::Cluster;
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{EventEnvelope, EventFilter, EventStore, Position};
use cqrs_nats::{Consume, Consumer, Incoming, Message, Raw, Relay, Route};
use cqrs_postgres::sqlx::{self, PgConnection};
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgProjectionState, PgRunnerTuning};
use serde_json::json;

/// The stream the relay publishes to and the consumer reads.
const STREAM: &str = "CLUSTER";
/// Concurrent writers, and how many appends (a routed event and one passed by) each.
const WRITERS: u64 = 4;
const APPENDS: u64 = 150;
/// How long JetStream waits for an acknowledgement (one lost with the killed node is not
/// waited for long).
const ACK_WAIT: Duration = Duration::from_secs(2);

/// How many times the route mapped an event to a message: beyond the events routed,
/// batches published again after a failure.
static ROUTED: AtomicU64 = AtomicU64::new(0);

/// Relays `Deposited` events to `cluster.deposits.<account>`.
struct Deposits;

impl Route for Deposits {
    const NAME: &'static str = "cluster_relay";

    fn route(&self, event: &EventEnvelope<Raw>) -> Option<Message> {
        (event.payload.event_type == "Deposited").then(|| {
            ROUTED.fetch_add(1, Ordering::SeqCst);
            Message::new(
                format!("cluster.deposits.{}", event.stream_id),
                json!({ "account": event.stream_id, "amount": event.payload.payload["amount"] }),
            )
        })
    }
}

/// Counts each message id's applications in `received`: anything but one row per routed
/// event, each applied once, is a loss or a double.
struct Received;

impl Consume for Received {
    const NAME: &'static str = "cluster_received";
    type Error = sqlx::Error;

    async fn apply(
        &mut self,
        cx: &mut PgConnection,
        message: &Incoming,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO received (message_id, sequence, applied) VALUES ($1, $2, 1) \
             ON CONFLICT (message_id) DO UPDATE SET applied = received.applied + 1",
        )
        .bind(message.message_id.as_deref().unwrap_or(""))
        .bind(i64::try_from(message.stream_sequence).unwrap_or(i64::MAX))
        .execute(&mut *cx)
        .await?;
        Ok(())
    }
}

/// The consumer's store, with its view.
async fn sink() -> PgEventStore {
    let store = common::store("cluster_sink").await;
    let mut tx = store.begin_in_schema().await.expect("tx");
    sqlx::query(
        "CREATE TABLE received (message_id text PRIMARY KEY, sequence bigint NOT NULL, \
         applied bigint NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .expect("view table");
    tx.commit().await.expect("commit");
    store
}

/// The view: each message id with how many times it was applied.
async fn received(store: &PgEventStore) -> HashMap<String, i64> {
    let mut tx = store.begin_in_schema().await.expect("tx");
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT message_id, applied FROM received")
        .fetch_all(&mut *tx)
        .await
        .expect("view");
    rows.into_iter().collect()
}

async fn received_count(store: &PgEventStore) -> i64 {
    let mut tx = store.begin_in_schema().await.expect("tx");
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM received")
        .fetch_one(&mut *tx)
        .await
        .expect("view count");
    count
}

/// Appends `APPENDS` pairs of events, each to a new account of writer `writer`, with a
/// pause after each so that the run lasts a few seconds.
async fn write(store: PgEventStore, writer: u64, appended: Arc<AtomicU64>) {
    for i in 0..APPENDS {
        let events = vec![
            NewEvent::new("Deposited", 1, json!({ "amount": writer * 1_000 + i })),
            NewEvent::new("Noted", 1, json!({ "note": "not relayed" })),
        ];
        store
            .append(AppendRequest::new(
                "account",
                format!("w{writer}-{i}"),
                0,
                events,
            ))
            .await
            .expect("append");
        appended.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// The ids of the routed events in the log, in order.
async fn routed_ids(store: &PgEventStore) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after = Position::START;
    loop {
        let batch = store
            .read_all(after, 500, &EventFilter::all())
            .await
            .expect("log");
        let Some(last) = batch.last() else {
            return ids;
        };
        after = last.position;
        ids.extend(
            batch
                .iter()
                .filter(|e| e.event_type == "Deposited")
                .map(|e| e.event_id.to_string()),
        );
    }
}

/// The stream's state and its leader's name, or `None` while it has no leader (a
/// request nobody answers would wait out the client's timeout: given up sooner).
async fn stream_info(js: &jetstream::Context) -> Option<(stream::State, Option<String>)> {
    let info = async {
        let mut stream = js.get_stream(STREAM).await.ok()?;
        let info = stream.info().await.ok()?;
        Some((
            info.state.clone(),
            info.cluster.as_ref().and_then(|c| c.leader.clone()),
        ))
    };
    tokio::time::timeout(Duration::from_millis(500), info)
        .await
        .ok()
        .flatten()
}

/// The name of the consumer's leader, or `None` while it has none.
async fn consumer_leader(js: &jetstream::Context) -> Option<String> {
    let info = async {
        let stream = js.get_stream(STREAM).await.ok()?;
        let info = stream.consumer_info(Received::NAME).await.ok()?;
        info.cluster.and_then(|c| c.leader)
    };
    tokio::time::timeout(Duration::from_millis(500), info)
        .await
        .ok()
        .flatten()
}

/// Moves the consumer's leadership (the cluster picks the new leader) until the node
/// leading the stream leads the consumer too, so that killing it fails both over; a few
/// tries at most (the kill reports whether it came to that).
async fn one_leader_for_both(js: &jetstream::Context) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut tries = 0;
    loop {
        let (Some((_, Some(stream))), Some(consumer)) =
            (stream_info(js).await, consumer_leader(js).await)
        else {
            assert!(
                Instant::now() < deadline,
                "the stream or the consumer has no leader"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if stream == consumer || tries == 8 {
            return;
        }
        tries += 1;
        let subject = format!("CONSUMER.LEADER.STEPDOWN.{STREAM}.{}", Received::NAME);
        let _: Result<serde_json::Value, _> = js.request(subject, &json!({})).await;
        while consumer_leader(js).await.is_none_or(|now| now == consumer) {
            assert!(
                Instant::now() < deadline,
                "the consumer's leadership did not move"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The longest time a value stood still while it was behind.
#[derive(Debug)]
struct Stall<T> {
    last: Option<T>,
    since: Instant,
    longest: Duration,
}

impl<T> Default for Stall<T> {
    fn default() -> Self {
        Self {
            last: None,
            since: Instant::now(),
            longest: Duration::ZERO,
        }
    }
}

impl<T: PartialEq> Stall<T> {
    fn see(&mut self, value: T, behind: bool) {
        if !behind || self.last.as_ref() != Some(&value) {
            self.last = Some(value);
            self.since = Instant::now();
        }
        self.longest = self.longest.max(self.since.elapsed());
    }
}

/// A time since the kill, or "never".
fn since(time: Option<Duration>) -> String {
    time.map_or_else(|| "never".to_owned(), |t| format!("{t:.1?}"))
}

/// Every message in the stream: its `Nats-Msg-Id` with its sequences.
async fn stream_ids(js: &jetstream::Context) -> BTreeMap<String, Vec<u64>> {
    let mut stream = js.get_stream(STREAM).await.expect("stream");
    let state = stream.info().await.expect("stream info").state.clone();
    let mut ids: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    if state.messages == 0 {
        return ids;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        let message = stream.get_raw_message(sequence).await.expect("message");
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        ids.entry(id).or_default().push(sequence);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_leader_killed_mid_run_loses_and_doubles_nothing() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3).await;
    let connect = || async_nats::connect(cluster.urls());
    let js = jetstream::new(connect().await.expect("nats"));

    // The stream on all three nodes, once the cluster has a JetStream leader.
    let config = stream::Config {
        name: STREAM.into(),
        subjects: vec!["cluster.>".into()],
        num_replicas: 3,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A request no leader answers waits out the client's timeout: asked again sooner.
        let created = async {
            let stream = js.get_or_create_stream(config.clone()).await?;
            // The durable consumer, as the consumer would make it, made now so that its
            // leadership can be moved before anything is pulled (a pull waiting at a leader
            // that steps down is not answered until it expires).
            stream
                .get_or_create_consumer(
                    Received::NAME,
                    pull::Config {
                        durable_name: Some(Received::NAME.to_owned()),
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: ACK_WAIT,
                        ..Default::default()
                    },
                )
                .await?;
            Ok::<_, async_nats::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(1), created).await {
            Ok(Ok(())) => break,
            outcome => {
                assert!(
                    Instant::now() < deadline,
                    "the cluster has no JetStream leader: {outcome:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let formed = started.elapsed();
    one_leader_for_both(&js).await;

    let source = common::store("cluster_source").await;
    let sink = sink().await;
    let runner = PgProjectionRunner::builder(source.clone())
        .owner("relay")
        .tuning(
            PgRunnerTuning::default()
                .poll_interval(Duration::from_millis(50))
                .claim_interval(Duration::from_millis(50)),
        )
        // A relay outlasts a failover: it tries its batch again and again.
        .retries(1_000, Duration::from_millis(20))
        // Back within a second of the stream's new leader, however long the election.
        .retry_ceiling(Duration::from_secs(1))
        .view(Relay::new(
            jetstream::new(connect().await.expect("nats")),
            Deposits,
        ))
        .start()
        .await
        .expect("runner");
    let consumer = Consumer::new(
        sink.clone(),
        jetstream::new(connect().await.expect("nats")),
        STREAM,
        Received,
    )
    .ack_wait(ACK_WAIT);
    let counts = consumer.counts();
    let consumer = tokio::spawn(consumer.run());

    let appended = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(write(source.clone(), w, Arc::clone(&appended))))
        .collect();

    // A third of the way in, with messages flowing, the node leading the stream (and the
    // consumer, if it can be arranged) dies.
    let deadline = Instant::now() + Duration::from_secs(30);
    while appended.load(Ordering::SeqCst) < WRITERS * APPENDS / 3 || counts.applied() == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing flowed: {} appended, {} applied",
            appended.load(Ordering::SeqCst),
            counts.applied()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let (leader, leads_both) = loop {
        if let Some((_, Some(leader))) = stream_info(&js).await {
            break (
                leader.clone(),
                consumer_leader(&js).await.is_some_and(|c| c == leader),
            );
        }
        assert!(Instant::now() < deadline, "the stream has no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let checkpoint = || async {
        source
            .operations()
            .projection(Deposits::NAME)
            .await
            .expect("relay status")
            .iter()
            .map(|s| s.position)
            .max()
            .unwrap_or(Position::START)
    };
    let at_kill = (
        stream_info(&js)
            .await
            .map_or(0, |(state, _)| state.messages),
        counts.applied(),
        appended.load(Ordering::SeqCst),
    );
    assert!(cluster.kill(&leader), "no node named {leader}");
    let killed_at = Instant::now();

    // Until everything appended is in the view; meanwhile, how long the stream took to
    // have a leader again, and the longest the relay and the consumer stood still while
    // behind.
    let mut led_again = None;
    let (mut relay, mut consuming) = (Stall::default(), Stall::default());
    let mut writing = writers;
    let mut expected: Option<Vec<String>> = None;
    // Generous: on a loaded machine the two nodes left have taken 40 s to elect a leader,
    // and the relay's doubling backoff and the consumer's 30 s pulls add to that.
    let deadline = Instant::now() + Duration::from_secs(80);
    loop {
        if led_again.is_none()
            && let Some((_, Some(now))) = stream_info(&js).await
            && now != leader
        {
            led_again = Some(killed_at.elapsed());
        }
        let head = source.head().await.expect("head");
        let relayed = checkpoint().await;
        relay.see(relayed, relayed < head);
        let applied = counts.applied();
        consuming.see(applied, applied < appended.load(Ordering::SeqCst));
        if expected.is_none() && writing.iter().all(tokio::task::JoinHandle::is_finished) {
            for writer in writing.drain(..) {
                writer.await.expect("writer");
            }
            expected = Some(routed_ids(&source).await);
        }
        if let Some(expected) = &expected {
            let caught_up = source
                .operations()
                .projection(Deposits::NAME)
                .await
                .expect("relay status")
                .iter()
                .all(|s| s.state == PgProjectionState::CaughtUp && s.position >= head);
            let view = received_count(&sink).await;
            if caught_up && usize::try_from(view).is_ok_and(|v| v >= expected.len()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not through {:.1?} after the kill: the relay caught up: {caught_up}, {view} of \
                 {} in the view, {:?} in the stream (a stream leader again after \
                 {}; the relay stood still for {:.1?}, the consumer for {:.1?})",
                killed_at.elapsed(),
                expected.len(),
                stream_info(&js).await.map(|(state, _)| state.messages),
                since(led_again),
                relay.longest,
                consuming.longest,
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Whatever was still on its way (a redelivery, a late publish) lands now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let expected = expected.expect("the log was read");
    let expected_set: HashSet<&str> = expected.iter().map(String::as_str).collect();

    // The stream: each routed event's id once, and nothing else.
    let in_stream = stream_ids(&js).await;
    let doubled: Vec<_> = in_stream.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(
        doubled.is_empty(),
        "messages with the same Nats-Msg-Id in the stream: {doubled:?}"
    );
    let stranger: Vec<_> = in_stream
        .keys()
        .filter(|id| !expected_set.contains(id.as_str()))
        .collect();
    assert!(
        stranger.is_empty(),
        "messages for no routed event: {stranger:?}"
    );
    let lost: Vec<_> = expected
        .iter()
        .filter(|id| !in_stream.contains_key(*id))
        .collect();
    assert!(lost.is_empty(), "routed events not in the stream: {lost:?}");

    // The view: each of them applied once.
    let view = received(&sink).await;
    let twice: Vec<_> = view.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "messages applied more than once: {twice:?}"
    );
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !view.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "routed events not applied: {missing:?}");
    assert_eq!(view.len(), expected.len(), "nothing else applied");
    assert_eq!(counts.parked(), 0, "nothing parked");

    println!(
        "cluster: {} events appended, {} routed, each once in the stream and the view; \
         formed in {formed:.1?}; killed {leader} (leading the stream{}) at {} of {} \
         appends, {} in the stream, {} applied; a stream leader again after \
         {}; the relay stood still for {:.1?} at most, the consumer for {:.1?}; \
         the route mapped {} messages again; the consumer passed by {} redeliveries; {:.1?} \
         in all",
        WRITERS * APPENDS * 2,
        expected.len(),
        if leads_both { " and the consumer" } else { "" },
        at_kill.2,
        WRITERS * APPENDS,
        at_kill.0,
        at_kill.1,
        since(led_again),
        relay.longest,
        consuming.longest,
        ROUTED
            .load(Ordering::SeqCst)
            .saturating_sub(u64::try_from(expected.len()).unwrap_or(u64::MAX)),
        counts.duplicates(),
        started.elapsed(),
    );

    runner.shutdown().await;
    consumer.abort();
    let _ = consumer.await;
    common::drop_schema(&source).await;
    common::drop_schema(&sink).await;
}
