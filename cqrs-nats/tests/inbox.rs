//! The inbox against a real `nats-server -js` and PostgreSQL: messages from another
//! service become events of the consumer's own store, each once and in the stream's
//! order, while the consumer is stopped at random points and started again; a projection
//! and a process manager of the service, run by its projection runner, see each of them
//! once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::Nats;
use cqrs_core::process::{Dispatch, Effects, ProcessManager, Refusal};
use cqrs_core::store::NewEvent;
use cqrs_core::{CommandMetadata, EventEnvelope, EventFilter, EventStore, Position, Projection};
use cqrs_nats::{Consumer, Inbox, InboxRoute, Incoming, Raw};
use cqrs_postgres::sqlx::{self, PgConnection};
use cqrs_postgres::{PgProjectionRunner, PgRunnerTuning, PgView};
use serde_json::json;

/// Placed orders become `OrderReceived` events; anything else is passed by.
struct Orders;

impl InboxRoute for Orders {
    const NAME: &'static str = "inbox_orders";

    fn event(&self, message: &Incoming) -> Option<NewEvent> {
        (message.subject == "orders.placed")
            .then(|| NewEvent::new("OrderReceived", 1, message.payload.clone()))
    }
}

/// A view of the received orders: how many times each was seen, in which order.
struct Received;

impl Projection for Received {
    const NAME: &'static str = "received_orders";
    type Event = Raw;
    type Context = PgConnection;
    type Error = sqlx::Error;

    fn filter() -> EventFilter {
        EventFilter::all().and_stream_type("inbox")
    }

    fn handle(
        &mut self,
        cx: &mut PgConnection,
        event: &EventEnvelope<Raw>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        let order = event.payload.payload["order"].as_i64();
        let sequence = event
            .metadata
            .headers
            .get("nats_stream_sequence")
            .and_then(|s| s.parse::<i64>().ok());
        async move {
            sqlx::query(
                "INSERT INTO received (seen, stream_sequence, order_no) VALUES \
                 (nextval('received_seen'), $1, $2)",
            )
            .bind(sequence)
            .bind(order)
            .execute(&mut *cx)
            .await?;
            Ok(())
        }
    }
}

impl PgView for Received {
    async fn setup(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(
            "CREATE SEQUENCE IF NOT EXISTS received_seen; \
             CREATE TABLE IF NOT EXISTS received (seen bigint NOT NULL, stream_sequence bigint, order_no bigint)",
        )
        .execute(cx)
        .await?;
        Ok(())
    }

    async fn reset(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("TRUNCATE received").execute(cx).await?;
        Ok(())
    }
}

/// Ships each received order: one `Ship` command per order, then done.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Shipping;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Ship {
    order: i64,
}

impl ProcessManager for Shipping {
    const NAME: &'static str = "shipping";
    type Event = Raw;
    type Command = Ship;

    fn filter() -> EventFilter {
        EventFilter::all().and_stream_type("inbox")
    }

    fn correlation_key(event: &EventEnvelope<Raw>) -> Option<String> {
        event.payload.payload["order"]
            .as_i64()
            .map(|o| o.to_string())
    }

    fn handle_event(&mut self, event: &EventEnvelope<Raw>, effects: &mut Effects<Ship>) {
        if let Some(order) = event.payload.payload["order"].as_i64() {
            effects.send(Ship { order });
            effects.finish();
        }
    }

    fn handle_timer(&mut self, _: &str, _: &mut Effects<Ship>) {}

    fn handle_refusal(&mut self, _: &Ship, _: &str, _: &mut Effects<Ship>) {}
}

/// The command ids each order was shipped with (a command sent again keeps its id).
#[derive(Default)]
struct Warehouse(Mutex<BTreeMap<i64, BTreeSet<String>>>);

impl Dispatch<Ship> for Warehouse {
    async fn dispatch(&self, ship: Ship, metadata: CommandMetadata) -> Result<(), Refusal> {
        let id = metadata
            .command_id
            .map(|id| id.to_string())
            .unwrap_or_default();
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(ship.order)
            .or_default()
            .insert(id);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_enter_the_inbox_once_in_order_across_restarts_and_projections_see_them_once() {
    let (nats, js) = Nats::with_stream("ORDERS").await;
    let store = common::store("inbox").await;
    let warehouse = Arc::new(Warehouse::default());
    let runner = PgProjectionRunner::builder(store.clone())
        .tuning(PgRunnerTuning::default().poll_interval(Duration::from_millis(50)))
        .view(Received)
        .process::<Shipping, _>(Arc::clone(&warehouse))
        .start()
        .await
        .expect("runner");

    let publish = |i: i64| {
        let js = js.clone();
        async move {
            let subject = if i % 10 == 0 {
                "orders.cancelled"
            } else {
                "orders.placed"
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("m{i}").as_str());
            js.publish_with_headers(subject, headers, json!({ "order": i }).to_string().into())
                .await
                .expect("publish")
                .await
                .expect("acknowledged");
        }
    };
    for i in 1..=60 {
        publish(i).await;
    }
    // Stopped at random points and started again while more arrive.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut runs = 0_u64;
    let mut next = 61;
    loop {
        if next <= 150 {
            for i in next..next + 15 {
                publish(i).await;
            }
            next += 15;
        }
        let client = async_nats::connect(&nats.url).await.expect("nats");
        let consumer = Consumer::new(
            store.clone(),
            jetstream::new(client),
            "ORDERS",
            Inbox::new(store.clone(), Orders),
        )
        .ack_wait(Duration::from_millis(300));
        let task = tokio::spawn(consumer.run());
        tokio::time::sleep(Duration::from_millis(40 + 37 * (runs % 7))).await;
        task.abort();
        let _ = task.await;
        runs += 1;
        let inbox = store
            .read_all(
                Position::START,
                10_000,
                &EventFilter::all().and_stream_type("inbox"),
            )
            .await
            .expect("log");
        assert!(
            inbox.len() <= 135,
            "a message appended twice: {}",
            inbox.len()
        );
        if inbox.len() == 135 && next > 150 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of 135 in the inbox after {runs} runs",
            inbox.len()
        );
    }

    // The log holds each placed order once, in the stream's order, with where it came from.
    let inbox = store
        .read_all(
            Position::START,
            10_000,
            &EventFilter::all().and_stream_type("inbox"),
        )
        .await
        .expect("log");
    let orders: Vec<i64> = inbox
        .iter()
        .filter_map(|e| e.payload["order"].as_i64())
        .collect();
    let expected: Vec<i64> = (1..=150).filter(|i| i % 10 != 0).collect();
    assert_eq!(
        orders, expected,
        "each placed order once, in order ({runs} runs)"
    );
    assert!(
        inbox
            .iter()
            .all(|e| e.event_type == "OrderReceived" && e.stream_id.starts_with('m'))
    );
    assert_eq!(
        inbox[0]
            .metadata
            .headers
            .get("nats_subject")
            .map(String::as_str),
        Some("orders.placed")
    );
    assert_eq!(
        inbox[0]
            .metadata
            .headers
            .get("nats_message_id")
            .map(String::as_str),
        Some("m1")
    );

    // The service's own projection saw each once, in order.
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen: Vec<i64> = loop {
        let mut tx = store.begin_in_schema().await.expect("tx");
        let seen: Vec<i64> = sqlx::query_scalar("SELECT order_no FROM received ORDER BY seen")
            .fetch_all(&mut *tx)
            .await
            .expect("view");
        if seen.len() >= expected.len() || Instant::now() > deadline {
            break seen;
        }
        drop(tx);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(seen, expected);
    // The process manager reacted to each once: one command (one id) per order.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shipped = warehouse
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if shipped.len() >= expected.len() || Instant::now() > deadline {
            assert_eq!(shipped.keys().copied().collect::<Vec<_>>(), expected);
            assert!(shipped.values().all(|ids| ids.len() == 1), "{shipped:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A redelivery of a message already appended found its first append: nothing failed.
    assert_eq!(cqrs_nats::parked(&store).await.expect("parked"), []);
    runner.shutdown().await;
    common::drop_schema(&store).await;
}
