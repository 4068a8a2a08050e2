//! A schema upgrade window and reads of one's own writes across services, against a real
//! `nats-server -js` and PostgreSQL:
//!
//! - while the window is open, each order goes out as version 2 and, downcast, as
//!   version 1, and a consumer of each version gets every order once in its own shape;
//!   closing the window is a configuration change after which only version 2 goes out;
//! - a downcast that fails stops the relay at that event with the window's name;
//! - a consumer applies in stream order, even when a message fails and is delivered
//!   again;
//! - after waiting on a write's position, the consumer's view holds that write, every
//!   time, in the consumer's process and in another.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::Nats;
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{EventEnvelope, EventStore, Position};
use cqrs_nats::{
    Consume, ConsumedPosition, Consumer, Incoming, Message, PositionError, Raw, Relay, Route,
    SchemaWindow, WindowError,
};
use cqrs_postgres::sqlx::{self, PgConnection};
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgRunnerTuning};
use serde_json::{Value, json};

/// Publishes placed orders as version 2: `{ order, amount (cents), currency }`.
struct Orders;

impl Route for Orders {
    const NAME: &'static str = "orders_relay";

    fn route(&self, event: &EventEnvelope<Raw>) -> Option<Message> {
        (event.payload.event_type == "OrderPlaced").then(|| {
            Message::new(
                "orders.v2.placed",
                json!({
                    "order": event.stream_id,
                    "amount": event.payload.payload["cents"],
                    "currency": event.payload.payload["currency"],
                }),
            )
        })
    }
}

/// Version 1 had `{ order, total (euros) }`, and knew no other currency.
fn v1_window() -> SchemaWindow {
    SchemaWindow::new("orders-v1", "orders.v2.", "orders.v1.", |v2: &Value| {
        if v2["currency"] != "EUR" {
            return Err(format!(
                "version 1 has no currency field, and {} is not EUR",
                v2["currency"]
            ));
        }
        let cents = v2["amount"].as_i64().ok_or("no amount")?;
        Ok(json!({ "order": v2["order"], "total": format!("{}.{:02}", cents / 100, cents % 100) }))
    })
    .expect("a valid window")
}

async fn place(store: &PgEventStore, order: &str, cents: i64, currency: &str) -> Position {
    store
        .append(AppendRequest::new(
            "order",
            order,
            0,
            vec![NewEvent::new(
                "OrderPlaced",
                1,
                json!({ "cents": cents, "currency": currency }),
            )],
        ))
        .await
        .expect("append")
        .position
}

async fn runner(store: &PgEventStore, relay: Relay<Orders>) -> PgProjectionRunner {
    PgProjectionRunner::builder(store.clone())
        .tuning(
            PgRunnerTuning::default()
                .poll_interval(Duration::from_millis(50))
                .claim_interval(Duration::from_millis(50)),
        )
        .retries(2, Duration::from_millis(20))
        .view(relay)
        .start()
        .await
        .expect("runner")
}

async fn jetstream(nats: &Nats) -> jetstream::Context {
    jetstream::new(async_nats::connect(&nats.url).await.expect("nats"))
}

/// Keeps each message as it came: the view of a consumer of one version.
struct Keep {
    fail_once: Option<u64>,
}

static FAILED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
enum KeepError {
    #[error("refused on its first delivery")]
    FirstDelivery,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

async fn keep(
    cx: &mut PgConnection,
    consumer: &str,
    message: &Incoming,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO kept (consumer, sequence, subject, payload, message_id) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(consumer)
    .bind(i64::try_from(message.stream_sequence).unwrap_or(i64::MAX))
    .bind(&message.subject)
    .bind(&message.payload)
    .bind(&message.message_id)
    .execute(&mut *cx)
    .await?;
    Ok(())
}

macro_rules! keeper {
    ($name:ident, $consumer:literal) => {
        struct $name(Keep);

        impl Consume for $name {
            const NAME: &'static str = $consumer;
            type Error = KeepError;

            async fn apply(
                &mut self,
                cx: &mut PgConnection,
                message: &Incoming,
            ) -> Result<(), KeepError> {
                if self.0.fail_once == Some(message.stream_sequence)
                    && !FAILED.swap(true, Ordering::SeqCst)
                {
                    return Err(KeepError::FirstDelivery);
                }
                keep(cx, $consumer, message).await?;
                Ok(())
            }
        }
    };
}

keeper!(BillingV1, "billing_v1");
keeper!(BillingV2, "billing_v2");
keeper!(Shipping, "shipping");

async fn consumer_store() -> PgEventStore {
    let store = common::store("window_view").await;
    let mut tx = store.begin_in_schema().await.expect("tx");
    sqlx::query(
        "CREATE TABLE kept (id bigserial PRIMARY KEY, consumer text NOT NULL, sequence bigint NOT NULL, \
         subject text NOT NULL, payload jsonb NOT NULL, message_id text, UNIQUE (consumer, sequence))",
    )
    .execute(&mut *tx)
    .await
    .expect("view table");
    tx.commit().await.expect("commit");
    store
}

/// What `consumer` kept, in the order it applied it: (sequence, subject, payload, id).
async fn kept(store: &PgEventStore, consumer: &str) -> Vec<(i64, String, Value, Option<String>)> {
    let mut tx = store.begin_in_schema().await.expect("tx");
    sqlx::query_as(
        "SELECT sequence, subject, payload, message_id FROM kept WHERE consumer = $1 ORDER BY id",
    )
    .bind(consumer)
    .fetch_all(&mut *tx)
    .await
    .expect("kept")
}

async fn until_kept(store: &PgEventStore, consumer: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = kept(store, consumer).await.len();
        if now >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{consumer} kept only {now} of {count}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_versions_go_out_while_the_window_is_open_and_only_the_new_one_after() {
    let (nats, js) = Nats::with_stream("ORDERS").await;
    let store = common::store("window").await;
    let view = consumer_store().await;
    for i in 1..=10_i64 {
        place(&store, &format!("o{i}"), 1_000 + i, "EUR").await;
    }

    // The window is open: the configuration closes nothing.
    let relay = Relay::new(jetstream(&nats).await, Orders)
        .window(v1_window())
        .expect("declared")
        .close_windows(Vec::<String>::new())
        .expect("nothing to close");
    let first = runner(&store, relay).await;
    let v1 = Consumer::new(
        view.clone(),
        jetstream(&nats).await,
        "ORDERS",
        BillingV1(Keep { fail_once: None }),
    )
    .filter_subject("orders.v1.>");
    let v2 = Consumer::new(
        view.clone(),
        jetstream(&nats).await,
        "ORDERS",
        BillingV2(Keep { fail_once: None }),
    )
    .filter_subject("orders.v2.>");
    let tasks = [tokio::spawn(v1.run()), tokio::spawn(v2.run())];
    until_kept(&view, "billing_v1", 10).await;
    until_kept(&view, "billing_v2", 10).await;
    let old = kept(&view, "billing_v1").await;
    let new = kept(&view, "billing_v2").await;
    for (i, ((_, s1, p1, id1), (_, s2, p2, id2))) in old.iter().zip(&new).enumerate() {
        let n = i64::try_from(i).expect("small") + 1;
        assert_eq!(s1, "orders.v1.placed");
        assert_eq!(s2, "orders.v2.placed");
        assert_eq!(
            p1,
            &json!({ "order": format!("o{n}"), "total": format!("10.{n:02}") })
        );
        assert_eq!(
            p2,
            &json!({ "order": format!("o{n}"), "amount": 1_000 + n, "currency": "EUR" })
        );
        let id2 = id2.as_deref().expect("an id");
        assert_eq!(
            id1.as_deref(),
            Some(format!("{id2}:orders-v1").as_str()),
            "the copy has an id of its own"
        );
    }
    first.shutdown().await;

    // A typo in the configuration is refused, not taken for "keep it open".
    let typo = Relay::new(jetstream(&nats).await, Orders)
        .window(v1_window())
        .expect("declared")
        .close_windows(["order-v1"]);
    assert!(matches!(typo, Err(WindowError::Unknown { ref name, .. }) if name == "order-v1"));

    // The window's end: the same code, another configuration.
    let closed = Relay::new(jetstream(&nats).await, Orders)
        .window(v1_window())
        .expect("declared")
        .close_windows("orders-v1".split(','))
        .expect("closed");
    let second = runner(&store, closed).await;
    for i in 11..=15_i64 {
        place(&store, &format!("o{i}"), 2_000 + i, "USD").await;
    }
    until_kept(&view, "billing_v2", 15).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        kept(&view, "billing_v1").await.len(),
        10,
        "nothing more for version 1"
    );
    assert_eq!(kept(&view, "billing_v2").await.len(), 15, "each order once");
    let mut stream = js.get_stream("ORDERS").await.expect("stream");
    assert_eq!(stream.info().await.expect("info").state.messages, 25);
    second.shutdown().await;
    for task in tasks {
        task.abort();
    }
    common::drop_schema(&store).await;
    common::drop_schema(&view).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downcast_that_fails_stops_the_relay_at_that_event_with_the_window_named() {
    let (nats, js) = Nats::with_stream("ORDERS").await;
    let store = common::store("window_fail").await;
    place(&store, "o1", 100, "EUR").await;
    place(&store, "o2", 200, "USD").await;
    place(&store, "o3", 300, "EUR").await;
    let relay = Relay::new(jetstream(&nats).await, Orders)
        .window(v1_window())
        .expect("declared");
    let runner = runner(&store, relay).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = store
            .operations()
            .projection(Orders::NAME)
            .await
            .expect("status");
        if let Some(failed) = status.into_iter().find(|s| s.error.is_some()) {
            break failed;
        }
        assert!(Instant::now() < deadline, "the relay did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = status.error.unwrap_or_default();
    assert!(
        error.contains("orders-v1") && error.contains("USD"),
        "{error}"
    );
    let mut stream = js.get_stream("ORDERS").await.expect("stream");
    let published = stream.info().await.expect("info").state.messages;
    assert!(
        published <= 2,
        "nothing from the refused event on: {published}"
    );
    runner.shutdown().await;
    common::drop_schema(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_on_a_writes_position_sees_the_write_and_messages_apply_in_order() {
    let (nats, _js) = Nats::with_stream("ORDERS").await;
    let store = common::store("ryw").await;
    let view = consumer_store().await;
    let runner = runner(&store, Relay::new(jetstream(&nats).await, Orders)).await;
    // The third message is refused once, then delivered again: nothing after it may
    // be applied before it.
    let consumer = Consumer::new(
        view.clone(),
        jetstream(&nats).await,
        "ORDERS",
        Shipping(Keep { fail_once: Some(3) }),
    )
    .max_deliveries(3);
    let here = consumer.position();
    let elsewhere = ConsumedPosition::new(view.clone(), Shipping::NAME, "ORDERS");
    assert_eq!(
        elsewhere.current().await.expect("position"),
        Position::START,
        "before it ever ran"
    );
    let task = tokio::spawn(consumer.run());

    // Ten at once: the third is refused on its first delivery, and the rest wait for it.
    let mut last = Position::START;
    for i in 1..=10_i64 {
        last = place(&store, &format!("o{i}"), i, "EUR").await;
    }
    here.wait_for(last, Duration::from_secs(20))
        .await
        .expect("reached");
    assert_eq!(kept(&view, "shipping").await.len(), 10);
    for i in 11..=40_i64 {
        let position = place(&store, &format!("o{i}"), i, "EUR").await;
        // Half the reads wait in the consumer's process, half as another process would.
        let waiter = if i % 2 == 0 { &here } else { &elsewhere };
        waiter
            .wait_for(position, Duration::from_secs(20))
            .await
            .expect("reached");
        let kept = kept(&view, "shipping").await;
        assert_eq!(
            kept.len(),
            usize::try_from(i).expect("small"),
            "after waiting on order {i}, the view holds it"
        );
        assert_eq!(
            kept.last().map(|k| k.2["order"].clone()),
            Some(json!(format!("o{i}")))
        );
        last = position;
    }
    assert_eq!(elsewhere.current().await.expect("position"), last);
    let sequences: Vec<i64> = kept(&view, "shipping").await.iter().map(|k| k.0).collect();
    assert_eq!(
        sequences,
        (1..=40).collect::<Vec<_>>(),
        "applied in the stream's order"
    );
    assert!(
        FAILED.load(Ordering::SeqCst),
        "the third message was refused once"
    );

    // A position not reached: a timeout that says where the consumer is.
    let beyond = Position::new(last.commit() + 1_000, last.sequence() + 1_000);
    match elsewhere.wait_for(beyond, Duration::from_millis(200)).await {
        Err(PositionError::Timeout { reached, .. }) => assert_eq!(reached, last),
        other => panic!("expected a timeout, got {other:?}"),
    }
    task.abort();
    runner.shutdown().await;
    common::drop_schema(&store).await;
    common::drop_schema(&view).await;
}
