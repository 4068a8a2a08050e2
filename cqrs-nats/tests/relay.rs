//! The relay against a real `nats-server -js` (started by the test on a free port with a
//! temporary store) and PostgreSQL: every routed event lands in the stream once, in
//! order; a replay of the whole log (a rebuild) publishes nothing new; a second relay
//! takes over when the owner stops, and still nothing is doubled or lost.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use common::Nats;
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{EventEnvelope, EventStore};
use cqrs_nats::{Message, Raw, Relay, Route};
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgRunnerTuning};
use serde_json::json;

/// Relays `Deposited` events of accounts to `bank.deposits.<account>`.
struct Deposits;

/// How many events the route mapped to a message, over every relay of this binary.
static ROUTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Route for Deposits {
    const NAME: &'static str = "deposits_relay";

    fn route(&self, event: &EventEnvelope<Raw>) -> Option<Message> {
        (event.payload.event_type == "Deposited").then(|| {
            ROUTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Message::new(
                format!("bank.deposits.{}", event.stream_id),
                json!({ "account": event.stream_id, "amount": event.payload.payload["amount"] }),
            )
        })
    }
}

async fn store() -> PgEventStore {
    common::store("relay").await
}

async fn deposit(store: &PgEventStore, account: &str, version: u64, amount: u64) {
    let events = vec![
        NewEvent::new("Deposited", 1, json!({ "amount": amount })),
        NewEvent::new("Noted", 1, json!({ "note": "not relayed" })),
    ];
    store
        .append(AppendRequest::new("account", account, version, events))
        .await
        .expect("append");
}

async fn runner(store: &PgEventStore, owner: &str, nats: &Nats) -> PgProjectionRunner {
    let client = async_nats::connect(&nats.url).await.expect("nats");
    PgProjectionRunner::builder(store.clone())
        .owner(owner)
        .tuning(
            PgRunnerTuning::default()
                .poll_interval(Duration::from_millis(50))
                .claim_interval(Duration::from_millis(50)),
        )
        // A relay outlasts an outage of the broker: it tries its batch again and again.
        .retries(1_000, Duration::from_millis(20))
        .view(Relay::new(jetstream::new(client), Deposits))
        .start()
        .await
        .expect("runner")
}

/// The messages in the stream: (subject, payload, message id), in stream order.
async fn messages(js: &jetstream::Context) -> Vec<(String, serde_json::Value, String)> {
    let mut stream = js.get_stream("BANK").await.expect("stream");
    let count = stream.info().await.expect("info").state.messages;
    let mut all = Vec::new();
    for sequence in 1..=count {
        let message = stream.get_raw_message(sequence).await.expect("message");
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let payload = serde_json::from_slice(&message.payload).expect("JSON");
        all.push((message.subject.to_string(), payload, id));
    }
    all
}

async fn until_count(js: &jetstream::Context, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut stream = js.get_stream("BANK").await.expect("stream");
        let now = stream.info().await.expect("info").state.messages;
        if now >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {now} of {count} messages arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_events_land_once_in_order_across_a_replay_and_a_change_of_owner() {
    let nats = Nats::start().await;
    let js = jetstream::new(async_nats::connect(&nats.url).await.expect("nats"));
    js.create_stream(stream::Config {
        name: "BANK".into(),
        subjects: vec!["bank.>".into()],
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .expect("stream");
    let store = store().await;
    for i in 0..30_u64 {
        deposit(&store, &format!("a-{}", i % 5), (i / 5) * 2, i + 1).await;
    }
    let first = runner(&store, "first", &nats).await;
    until_count(&js, 30).await;
    let all = messages(&js).await;
    assert_eq!(
        all.len(),
        30,
        "one message per routed event, none for the others"
    );
    let amounts: Vec<u64> = all
        .iter()
        .map(|(_, p, _)| p["amount"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(amounts, (1..=30).collect::<Vec<_>>(), "in the log's order");
    assert_eq!(all[0].0, "bank.deposits.a-0");
    let log = store
        .read_all(
            cqrs_core::Position::START,
            100,
            &cqrs_core::EventFilter::all(),
        )
        .await
        .expect("log");
    let deposited: Vec<String> = log
        .iter()
        .filter(|e| e.event_type == "Deposited")
        .map(|e| e.event_id.to_string())
        .collect();
    let ids: Vec<String> = all.iter().map(|(_, _, id)| id.clone()).collect();
    assert_eq!(ids, deposited, "each message carries its event's id");

    // A replay of the whole log publishes the same ids again: JetStream drops them.
    assert!(
        store
            .operations()
            .rebuild(Deposits::NAME, 1)
            .await
            .expect("rebuild")
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = store
            .operations()
            .projection(Deposits::NAME)
            .await
            .expect("status");
        if status
            .iter()
            .all(|s| s.state == cqrs_postgres::PgProjectionState::CaughtUp)
            && status
                .iter()
                .all(|s| s.updated_at > log.last().map_or(s.updated_at, |e| e.recorded_at))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replay did not finish: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        ROUTED.load(std::sync::atomic::Ordering::SeqCst) >= 60,
        "the replay published every message again"
    );
    assert_eq!(messages(&js).await.len(), 30, "the replay added nothing");

    // A second relay waits; the first stops; the second goes on from the checkpoint.
    let second = runner(&store, "second", &nats).await;
    first.shutdown().await;
    for i in 30..40_u64 {
        deposit(&store, &format!("b-{i}"), 0, i + 1).await;
    }
    until_count(&js, 40).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = messages(&js).await;
    assert_eq!(all.len(), 40);
    let amounts: Vec<u64> = all
        .iter()
        .map(|(_, p, _)| p["amount"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(amounts, (1..=40).collect::<Vec<_>>());
    second.shutdown().await;
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_the_stream_cannot_take_messages() {
    let nats = Nats::start().await;
    let js = jetstream::new(async_nats::connect(&nats.url).await.expect("nats"));
    let store = store().await;
    for i in 0..10_u64 {
        deposit(&store, &format!("c-{i}"), 0, i + 1).await;
    }
    // No stream yet: every publish fails, and the batch is tried again.
    let relay = runner(&store, "only", &nats).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = store
        .operations()
        .projection(Deposits::NAME)
        .await
        .expect("status");
    assert!(
        status
            .iter()
            .all(|s| s.position == cqrs_core::Position::START),
        "no checkpoint without acknowledgements: {status:?}"
    );
    js.create_stream(stream::Config {
        name: "BANK".into(),
        subjects: vec!["bank.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    until_count(&js, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let amounts: Vec<u64> = messages(&js)
        .await
        .iter()
        .map(|(_, p, _)| p["amount"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(amounts, (1..=10).collect::<Vec<_>>());
    relay.shutdown().await;
    common::drop_schema(&store).await;
}
