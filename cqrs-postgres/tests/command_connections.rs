//! Commands run on connections the store keeps: reused from one command to the next,
//! never more than the configured number, and replaced after a failure that leaves one in
//! an unknown state.

mod common;

use std::time::Duration;

use common::{TestStore, eventually};
use cqrs_core::EventStore;
use cqrs_core::store::{AppendRequest, NewEvent};
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

/// Waits until the server lists none of the store's own connections (a connection closed
/// a moment ago, the migration's, may take a moment to leave the list).
async fn until_no_command_backends(t: &TestStore, application_name: &str) {
    let settled = eventually(Duration::from_secs(10), || async move {
        (command_backends(t, application_name).await == 0).then_some(())
    })
    .await;
    assert!(settled.is_some(), "connections before any command");
}

/// A store on a pool of one connection, without notifications (which would use it).
async fn store(schema: &str, command_connections: usize) -> (TestStore, PgEventStore) {
    let pool = common::pool(1, schema).await;
    let t = TestStore::on_pool(pool, schema).await;
    let store = common::reconfigured(&t.store, |b| {
        b.notify(PgNotify::Off)
            .tuning(t.store.tuning().command_connections(command_connections))
    });
    assert_eq!(
        store.tuning().command_connections,
        Some(command_connections)
    );
    (t, store)
}

fn one(n: u64) -> Vec<NewEvent> {
    vec![NewEvent::new("Numbered", 1, json!({ "n": n }))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reuse_the_stores_connections_up_to_its_limit() {
    let schema = common::unique_schema("cmdconn");
    let (t, store) = store(&schema, 3).await;
    until_no_command_backends(&t, &schema).await;

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

/// Ends every session of the store's own connections (the pool's too, but for the one
/// running this); returns how many.
async fn end_sessions(t: &TestStore, application_name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()) AS k",
    )
    .bind(application_name)
    .fetch_one(t.pool())
    .await
    .expect("terminate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_server_ended_are_replaced_without_failing_a_command() {
    let schema = common::unique_schema("cmdkill");
    let (t, store) = store(&schema, 4).await;
    // Four connections open and idle: four appends at once, each on a statement of its
    // own.
    let store = common::reconfigured(&store, |b| b.tuning(store.tuning().append_batches(0)));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let store = store.clone();
        writers.spawn(async move {
            store
                .append(AppendRequest::new("k", format!("k-{w}"), 0, one(0)))
                .await
                .expect("first append")
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined.expect("writer");
    }
    let opened = command_backends(&t, &schema).await;
    assert!(opened >= 2, "{opened} connections");

    // End all of them, as a server restart or an operator would.
    assert_eq!(end_sessions(&t, &schema).await, opened);

    // Each command finds its connection gone: its statement is sent again, on a checked
    // or a new connection, and goes through once. Loads and appends alike.
    for version in 1..=4 {
        let loaded = store
            .load_for_command("k", "k-0", 1)
            .await
            .expect("load after the kill");
        assert_eq!(
            loaded.events.len(),
            usize::try_from(version).expect("small")
        );
        let outcome = store
            .append(AppendRequest::new("k", "k-0", version, one(version)))
            .await
            .expect("append after the kill");
        assert_eq!(outcome.stream_version, version + 1);
    }
    assert_eq!(store.load("k", "k-0", 0).await.expect("load").len(), 5);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_the_pool_alone_opens_no_connection_of_its_own() {
    let schema = common::unique_schema("cmdpool");
    let (t, _) = store(&schema, 0).await;
    // Notifications on (after commit), everything on the pool of one connection.
    let store = common::reconfigured(&t.store, |b| {
        b.tuning(t.store.tuning().command_connections(0))
    });
    let mut listener = sqlx::postgres::PgListener::connect(&common::database_url())
        .await
        .expect("listener");
    listener.listen(store.channel()).await.expect("listen");
    until_no_command_backends(&t, &schema).await;

    for version in 0..3 {
        store.load_for_command("p", "p-1", 1).await.expect("load");
        let outcome = store
            .append(AppendRequest::new("p", "p-1", version, one(version)))
            .await
            .expect("append");
        let notification = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("notified in time")
            .expect("notification");
        assert_eq!(notification.payload(), outcome.position.to_string());
    }
    assert_eq!(command_backends(&t, &schema).await, 0);
    t.cleanup().await;
}

/// Ends the sessions of the store's own connections that sit idle; returns how many.
async fn end_idle_sessions(pool: &sqlx::PgPool, application_name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND state = 'idle' AND pid <> pg_backend_pid()) AS k",
    )
    .bind(application_name)
    .fetch_one(pool)
    .await
    .expect("terminate")
}

/// Writers append, their appends sent together, while callers give up on some appends
/// mid-way (a statement abandoned so leaves the appends it carried to be sent again, as
/// appends whose outcome is unknown) and the server ends the store's idle sessions every
/// 20 ms. Each append reported written is in the log once, where the outcome says; an
/// append fails only with its outcome unknown (a session ended between the check of its
/// connection and its statement, each time it was sent), and is then in the log once or
/// not at all. That a resend never takes an unchecked connection is shown exactly by
/// `connections_the_server_ended_are_replaced_without_failing_a_command`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_sent_again_never_land_on_a_connection_that_was_not_checked() {
    let schema = common::unique_schema("cmdrace");
    // The test's own connections are named apart from the store's, whose idle sessions
    // (its pool's and its own) are ended.
    let t = TestStore::on_pool(common::pool(2, &format!("{schema}_t")).await, &schema).await;
    let store = PgEventStore::builder(common::pool(4, &schema).await)
        .schema(&schema)
        .notify(PgNotify::Off)
        .tuning(cqrs_postgres::PgStoreTuning::default().command_connections(6))
        .build()
        .expect("the store");
    let killer_pool = common::pool(1, &format!("{schema}_killer")).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let stop = std::sync::Arc::clone(&stop);
        let schema = schema.clone();
        tokio::spawn(async move {
            let mut ended = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                ended += end_idle_sessions(&killer_pool, &schema).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ended
        })
    };
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..6_u64 {
        let store = store.clone();
        writers.spawn(async move {
            let (mut written, mut abandoned, mut failed) = (Vec::new(), 0, Vec::new());
            for n in 0..300_u64 {
                let events = vec![NewEvent::new("Numbered", 1, json!({ "n": n }))];
                let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
                let append =
                    store.append(AppendRequest::new("race", format!("r-{w}-{n}"), 0, events));
                // Every seventh append, the caller gives up almost at once.
                let patience = if n % 7 == 0 {
                    Duration::from_micros(300)
                } else {
                    Duration::from_secs(30)
                };
                match tokio::time::timeout(patience, append).await {
                    Ok(Ok(outcome)) => written.push((outcome, ids)),
                    Ok(Err(error)) => failed.push((error, ids)),
                    Err(_) => abandoned += 1,
                }
            }
            (written, abandoned, failed)
        });
    }
    let (mut written, mut abandoned, mut failed) = (Vec::new(), 0, Vec::new());
    while let Some(joined) = writers.join_next().await {
        let (w, a, f) = joined.expect("writer");
        written.extend(w);
        abandoned += a;
        failed.extend(f);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ended = killer.await.expect("killer");
    println!(
        "{} appends reported written, {abandoned} abandoned by their callers, {} failed; {ended} \
         idle sessions ended meanwhile",
        written.len(),
        failed.len()
    );
    assert!(ended > 0, "no session was ended: the test proves nothing");
    for (error, ids) in &failed {
        assert!(
            matches!(
                error.as_backend::<cqrs_postgres::Error>(),
                Some(cqrs_postgres::Error::OutcomeUnknown { .. })
            ),
            "an append failed otherwise than with its outcome unknown: {error:?}"
        );
        let (count,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(
            t.sql("SELECT count(*) FROM {schema}.events WHERE event_id = ANY ($1)"),
        ))
        .bind(ids)
        .fetch_one(t.pool())
        .await
        .expect("count");
        assert!(
            count <= 1,
            "an append of unknown outcome is in the log {count} times"
        );
    }
    for (outcome, ids) in &written {
        let (count,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(t.sql(
            "SELECT count(*) FROM {schema}.events WHERE event_id = ANY ($1) AND transaction_id = $2",
        )))
        .bind(ids)
        .bind(i64::try_from(outcome.position.commit()).expect("fits"))
        .fetch_one(t.pool())
        .await
        .expect("count");
        assert_eq!(
            count, 1,
            "an append reported written is in the log once, where it says"
        );
    }
    t.cleanup().await;
}
