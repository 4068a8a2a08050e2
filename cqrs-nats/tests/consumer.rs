//! The consumer against a real `nats-server -js` and PostgreSQL: a redelivery (its
//! acknowledgement came too late) and a consumer stopped at random points and started
//! again change nothing twice; the view ends exactly right.

mod common;

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::Nats;
use cqrs_nats::{Consume, Consumer, Incoming};
use cqrs_postgres::PgEventStore;
use cqrs_postgres::sqlx::{self, PgConnection};
use serde_json::json;

/// Sequences whose first delivery is held past the acknowledgement deadline.
static SLOW: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Adds each message's amount to `totals`: applied twice, the total would be wrong.
struct Totals;

impl Consume for Totals {
    const NAME: &'static str = "totals";
    type Error = sqlx::Error;

    async fn apply(
        &mut self,
        cx: &mut PgConnection,
        message: &Incoming,
    ) -> Result<(), sqlx::Error> {
        let slow = {
            let mut slow = SLOW.lock().unwrap_or_else(PoisonError::into_inner);
            let at = slow.iter().position(|s| *s == message.stream_sequence);
            at.map(|i| slow.remove(i)).is_some()
        };
        if slow {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        sqlx::query(
            "INSERT INTO totals (account, total, messages) VALUES ($1, $2, 1) \
             ON CONFLICT (account) DO UPDATE \
             SET total = totals.total + EXCLUDED.total, messages = totals.messages + 1",
        )
        .bind(message.payload["account"].as_str().unwrap_or("?"))
        .bind(message.payload["amount"].as_i64().unwrap_or(0))
        .execute(&mut *cx)
        .await?;
        Ok(())
    }
}

async fn store() -> PgEventStore {
    let store = common::store("consumer").await;
    let mut tx = store.begin_in_schema().await.expect("tx");
    sqlx::query("CREATE TABLE totals (account text PRIMARY KEY, total bigint NOT NULL, messages bigint NOT NULL)")
        .execute(&mut *tx)
        .await
        .expect("view table");
    tx.commit().await.expect("commit");
    store
}

async fn totals(store: &PgEventStore) -> (i64, i64) {
    let mut tx = store.begin_in_schema().await.expect("tx");
    let row: (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT sum(total)::bigint, sum(messages)::bigint FROM totals")
            .fetch_one(&mut *tx)
            .await
            .expect("totals");
    (row.0.unwrap_or(0), row.1.unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_and_restarts_change_nothing_twice() {
    let (nats, js) = Nats::with_stream("PAYMENTS").await;
    let store = store().await;
    // The first delivery of message 5 is held past the acknowledgement deadline.
    SLOW.lock().unwrap_or_else(PoisonError::into_inner).push(5);

    let mut expected = 0_i64;
    let publish = |i: i64| {
        let js = js.clone();
        async move {
            js.publish(
                format!("payments.a{}", i % 4),
                json!({ "account": format!("a{}", i % 4), "amount": i })
                    .to_string()
                    .into(),
            )
            .await
            .expect("publish")
            .await
            .expect("acknowledged");
        }
    };
    for i in 1..=40_i64 {
        publish(i).await;
        expected += i;
    }

    // Uninterrupted: the held message is delivered again while it is being applied, and
    // the second delivery is passed by.
    let consumer = Consumer::new(store.clone(), js.clone(), "PAYMENTS", Totals)
        .ack_wait(Duration::from_millis(300));
    let counts = consumer.counts();
    let task = tokio::spawn(consumer.run());
    let deadline = Instant::now() + Duration::from_secs(30);
    while counts.applied() < 40 || counts.duplicates() < 1 {
        assert!(
            Instant::now() < deadline,
            "applied {}, passed by {}",
            counts.applied(),
            counts.duplicates()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    let _ = task.await;
    assert_eq!(
        totals(&store).await,
        (expected, 40),
        "each amount counted once"
    );

    // Then stopped at random points and started again while more arrive.
    for i in 41..=100_i64 {
        publish(i).await;
        expected += i;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut runs = 0_u64;
    loop {
        // A connection of its own, as a process of its own would have: stopping it ends
        // its pending pulls on the server.
        let client = async_nats::connect(&nats.url).await.expect("nats");
        let consumer = Consumer::new(store.clone(), jetstream::new(client), "PAYMENTS", Totals)
            .ack_wait(Duration::from_millis(300));
        let task = tokio::spawn(consumer.run());
        tokio::time::sleep(Duration::from_millis(40 + 37 * (runs % 7))).await;
        task.abort();
        let _ = task.await;
        runs += 1;
        let (total, messages) = totals(&store).await;
        assert!(
            messages <= 100,
            "a message applied twice: {messages} of 100"
        );
        if messages == 100 {
            assert_eq!(
                total, expected,
                "each amount counted once, over {runs} runs"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {messages} of 100 applied after {runs} runs"
        );
    }
    common::drop_schema(&store).await;
}

/// Like `Totals`, but refuses a message without an amount, and one of a type (subject)
/// it does not know.
struct Strict;

#[derive(Debug)]
enum StrictError {
    NoAmount,
    UnknownType(String),
    Database(sqlx::Error),
}

impl std::fmt::Display for StrictError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoAmount => f.write_str("the message has no amount"),
            Self::UnknownType(subject) => write!(f, "no message type is known on `{subject}`"),
            Self::Database(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for StrictError {}

impl Consume for Strict {
    const NAME: &'static str = "strict";
    type Error = StrictError;

    async fn apply(
        &mut self,
        cx: &mut PgConnection,
        message: &Incoming,
    ) -> Result<(), StrictError> {
        if message.subject != "odd.x" {
            return Err(StrictError::UnknownType(message.subject.clone()));
        }
        let amount = message.payload["amount"]
            .as_i64()
            .ok_or(StrictError::NoAmount)?;
        sqlx::query(
            "INSERT INTO totals (account, total, messages) VALUES ('all', $1, 1) \
             ON CONFLICT (account) DO UPDATE \
             SET total = totals.total + EXCLUDED.total, messages = totals.messages + 1",
        )
        .bind(amount)
        .execute(&mut *cx)
        .await
        .map_err(StrictError::Database)?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_cannot_be_applied_are_parked_with_their_error_and_the_rest_goes_on() {
    let (_nats, js) = Nats::with_stream("ODD").await;
    let store = store().await;
    for (subject, payload) in [
        ("odd.x", json!({ "amount": 1 }).to_string()),
        ("odd.x", json!({ "note": "no amount" }).to_string()),
        ("odd.x", "not json at all".to_owned()),
        ("odd.y", json!({ "amount": 5 }).to_string()),
        ("odd.x", json!({ "amount": 2 }).to_string()),
    ] {
        js.publish(subject, payload.into())
            .await
            .expect("publish")
            .await
            .expect("acknowledged");
    }
    let consumer = Consumer::new(store.clone(), js.clone(), "ODD", Strict)
        .ack_wait(Duration::from_millis(300))
        .max_deliveries(2);
    let counts = consumer.counts();
    let task = tokio::spawn(consumer.run());
    let deadline = Instant::now() + Duration::from_secs(30);
    while counts.applied() < 2 || counts.parked() < 3 {
        assert!(
            Instant::now() < deadline,
            "applied {}, parked {}",
            counts.applied(),
            counts.parked()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    assert_eq!(totals(&store).await, (3, 2), "the good ones applied, once");
    let mut tx = store.begin_in_schema().await.expect("tx");
    let parked: Vec<(i64, String)> =
        sqlx::query_as("SELECT sequence, error FROM nats_parked ORDER BY sequence")
            .fetch_all(&mut *tx)
            .await
            .expect("parked");
    drop(tx);
    assert_eq!(parked.len(), 3, "{parked:?}");
    assert_eq!(parked[0].0, 2);
    assert_eq!(parked[0].1, "the message has no amount");
    assert_eq!(parked[1].0, 3);
    assert!(
        parked[1].1.starts_with("the payload is not JSON"),
        "{parked:?}"
    );
    assert_eq!(
        parked[2],
        (4, "no message type is known on `odd.y`".to_owned())
    );
    // As an operator's tool lists them.
    let listed = cqrs_nats::parked(&store).await.expect("parked");
    assert_eq!(
        listed
            .iter()
            .map(|p| (p.sequence, p.subject.as_str(), p.payload.as_str()))
            .collect::<Vec<_>>(),
        [
            (2, "odd.x", r#"{"note":"no amount"}"#),
            (3, "odd.x", "not json at all"),
            (4, "odd.y", r#"{"amount":5}"#)
        ]
    );
    common::drop_schema(&store).await;
}
