//! Commands run on connections the store keeps: reused from one command to the next,
//! never more than the configured number, and replaced after a failure that leaves one in
//! an unknown state.

mod common;

use std::time::Duration;

use common::{TestStore, eventually};
use cqrs_core::{AppendRequest, EventStore, NewEvent};
use cqrs_postgres::{PgEventStore, PgNotify};
use serde_json::json;

/// The store's own connections: the test's connections to the server but the pool's
/// one (the pool holds a single connection, which runs this query).
async fn command_backends(t: &TestStore, application_name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(application_name)
    .fetch_one(t.pool())
    .await
    .expect("count backends")
}

/// A store on a pool of one connection, without notifications (which would use it).
async fn store(schema: &str, command_connections: usize) -> (TestStore, PgEventStore) {
    let pool = common::pool(1, schema).await;
    let t = TestStore::on_pool(pool, schema).await;
    let store = t
        .store
        .clone()
        .with_notify(PgNotify::Off)
        .with_command_connections(command_connections);
    assert_eq!(store.command_connections(), command_connections);
    (t, store)
}

fn one(n: u64) -> Vec<NewEvent> {
    vec![NewEvent::new("Numbered", 1, json!({ "n": n }))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reuse_the_stores_connections_up_to_its_limit() {
    let schema = common::unique_schema("cmdconn");
    let (t, store) = store(&schema, 3).await;
    // (The migration's connection, closed by now, may take a moment to leave the list.)
    let settled = eventually(Duration::from_secs(10), || {
        let (t, schema) = (&t, &schema);
        async move { (command_backends(t, schema).await == 0).then_some(()) }
    })
    .await;
    assert!(settled.is_some(), "connections before any command");

    // One after the other: one connection serves them all.
    for version in 0..50 {
        store.load_for_command("seq", "s-1", 1).await.expect("load");
        store
            .append(AppendRequest::new("seq", "s-1", version, one(version)))
            .await
            .expect("append");
    }
    assert_eq!(command_backends(&t, &schema).await, 1);

    // Sixteen at once: never more than three.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..16 {
        let store = store.clone();
        writers.spawn(async move {
            for version in 0..20 {
                store
                    .append(AppendRequest::new(
                        "par",
                        format!("p-{w}"),
                        version,
                        one(version),
                    ))
                    .await
                    .expect("append");
            }
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined.expect("writer");
    }
    let opened = command_backends(&t, &schema).await;
    assert!((1..=3).contains(&opened), "{opened} command connections");

    // A conflict is a statement error: the connection goes on serving.
    let stale = store
        .append(AppendRequest::new("seq", "s-1", 3, one(0)))
        .await
        .expect_err("stale");
    assert!(stale.is_conflict(), "{stale:?}");
    assert_eq!(command_backends(&t, &schema).await, opened);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ended_by_the_server_is_replaced() {
    let schema = common::unique_schema("cmdkill");
    let (t, store) = store(&schema, 1).await;
    store
        .append(AppendRequest::new("k", "k-1", 0, one(0)))
        .await
        .expect("first append");

    // End the store's (idle) command connection from another session.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()) AS k",
    )
    .bind(&schema)
    .fetch_one(t.pool())
    .await
    .expect("terminate");
    assert_eq!(killed, 1);

    // The next command on it may fail (the session is gone; whether its statement ran
    // is not known to the client, so it is not retried) but never writes twice; the one
    // after runs on a new connection.
    let mut appended = 1;
    for attempt in 0..2 {
        match store
            .append(AppendRequest::new("k", "k-1", appended, one(appended)))
            .await
        {
            Ok(outcome) => {
                appended = outcome.stream_version;
            }
            Err(error) => assert_eq!(attempt, 0, "{error:?}"),
        }
    }
    assert!(appended >= 2, "no append went through after the kill");
    assert_eq!(
        store.load("k", "k-1", 0).await.expect("load").len(),
        usize::try_from(appended).expect("small")
    );
    t.cleanup().await;
}
