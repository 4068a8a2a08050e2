//! A connection killed while an append runs: nothing of the killed statement is written,
//! the store sends the append again on another connection, and it is written once.

mod common;

use std::time::Duration;

use common::{TestStore, eventually};
use cqrs_core::EventStore;
use cqrs_core::store::{AppendRequest, NewEvent};
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_append_is_sent_again_and_written_once() {
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

    // The killed statement wrote nothing: the log is empty while the append, sent again,
    // waits on the held command id as the first one did.
    let rows = || async {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(
            t.sql("SELECT count(*) FROM {schema}.events"),
        ))
        .fetch_one(&admin)
        .await
        .expect("count")
    };
    assert_eq!(rows().await, 0, "a killed append left rows behind");
    let waiting = eventually(Duration::from_secs(20), || {
        let admin = admin.clone();
        let schema = schema.clone();
        async move {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND state = 'active' AND wait_event_type = 'Lock'",
            )
            .bind(&schema)
            .fetch_one(&admin)
            .await
            .expect("look for the second attempt");
            (waiting == 1).then_some(())
        }
    })
    .await;
    assert!(waiting.is_some(), "the append was not sent again");
    assert!(!append.is_finished());
    blocker.rollback().await.expect("release the command id");

    let outcome = append
        .await
        .expect("append task")
        .expect("the append sent again goes through");
    assert_eq!((outcome.first_version, outcome.stream_version), (1, 500));
    assert!(!outcome.duplicate);
    assert_eq!(rows().await, 500, "written once");
    let recorded = t
        .store
        .find_command(command_id, "kill", "k-1")
        .await
        .expect("find")
        .expect("the command id is recorded");
    assert_eq!(recorded.position, outcome.position);

    // The same command again is a duplicate, on the same pool.
    let again = t
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
        .expect("the repeated command");
    assert!(again.duplicate);
    assert_eq!(again.position, outcome.position);
    assert_eq!(
        t.store.load("kill", "k-1", 0).await.expect("load").len(),
        500
    );
    admin.close().await;
    t.cleanup().await;
}
