//! A connection killed while an append runs: the append fails, nothing of it is written,
//! and the next command works.

mod common;

use std::time::Duration;

use common::{TestStore, eventually};
use cqrs_core::{AppendRequest, Error, EventStore, NewEvent};
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_append_writes_nothing_and_the_store_recovers() {
    let schema = common::unique_schema("kill");
    // One connection, so the backend to kill is the appender's.
    let pool = common::pool(1, &schema).await;
    let t = TestStore::on_pool(pool, &schema).await;
    let admin = common::pool(2, "kill-admin").await;

    // Another session holds the command id uncommitted. The append inserts all its
    // events first, then waits on that key: the kill lands mid-statement, after the
    // event rows were written.
    let command_id = Uuid::new_v4();
    let mut blocker = admin.begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(t.sql(
        "INSERT INTO {schema}.commands \
         (command_id, stream_type, stream_id, first_version, stream_version, transaction_id, sequence) \
         VALUES ($1, 'x', 'x', 1, 1, 0, 0)",
    )))
    .bind(command_id)
    .execute(&mut *blocker)
    .await
    .expect("hold the command id");

    let events: Vec<NewEvent> = (0..500)
        .map(|i| NewEvent::new("Numbered", 1, json!({ "n": i, "pad": "x".repeat(200) })))
        .collect();
    let store = t.store.clone();
    let append = tokio::spawn(async move {
        store
            .append(AppendRequest::new("kill", "k-1", 0, events).with_command_id(command_id))
            .await
    });

    let killed = eventually(Duration::from_secs(20), || {
        let admin = admin.clone();
        let schema = schema.clone();
        async move {
            let killed: Option<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND state = 'active' AND wait_event_type = 'Lock'",
            )
            .bind(&schema)
            .fetch_optional(&admin)
            .await
            .expect("terminate");
            killed.filter(|k| *k)
        }
    })
    .await;
    assert!(killed.is_some(), "the append never blocked");

    match append.await.expect("append task") {
        Err(Error::Backend(_)) => {}
        other => panic!("expected a backend error, got {other:?}"),
    }
    blocker.rollback().await.expect("release the command id");

    // Nothing of the killed append is stored.
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(
        t.sql("SELECT count(*) FROM {schema}.events"),
    ))
    .fetch_one(&admin)
    .await
    .expect("count");
    assert_eq!(rows, 0, "a killed append left rows behind");
    assert!(
        t.store
            .find_command(command_id)
            .await
            .expect("find")
            .is_none()
    );

    // The next command works, on the same pool.
    let outcome = t
        .store
        .append(
            AppendRequest::new(
                "kill",
                "k-1",
                0,
                vec![NewEvent::new("Numbered", 1, json!({}))],
            )
            .with_command_id(command_id),
        )
        .await
        .expect("the next append works");
    assert_eq!(outcome.stream_version, 1);
    assert!(!outcome.duplicate);
    assert_eq!(t.store.load("kill", "k-1", 0).await.expect("load").len(), 1);
    admin.close().await;
    t.cleanup().await;
}
