//! Schemas, migrations and notifications.

mod common;

use std::time::Duration;

use common::TestStore;
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{Error as CoreError, EventStore, Position};
use cqrs_postgres::{Error, PgEventStore, PgNotify};
use serde_json::json;
use sqlx::postgres::PgListener;

fn event() -> NewEvent {
    NewEvent::new("Numbered", 1, json!({}))
}

/// The position announced by the next notification `listener` receives, on `channel`.
async fn next_announced(listener: &mut PgListener, channel: &str) -> Position {
    let notification = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("notified in time")
        .expect("notification");
    assert_eq!(notification.channel(), channel);
    notification.payload().parse().expect("a position token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_explicit_repeatable_and_tracked_in_its_own_table() {
    let schema = common::unique_schema("mig");
    let pool = common::pool(2, &schema).await;
    let store = PgEventStore::builder(pool.clone())
        .schema(&schema)
        .build()
        .expect("valid schema");

    // Before migrate, nothing exists: a typed backend error, no panic.
    match store.load("s", "1", 0).await {
        Err(error @ CoreError::Backend(_)) => {
            assert!(Error::from_store(&error).is_some(), "{error:?}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }

    store.migrate().await.expect("migrate");
    store.migrate().await.expect("migrate again");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(&pool)
    .await
    .expect("list tables");
    for table in ["_cqrs_migrations", "commands", "events", "snapshots"] {
        assert!(
            tables.iter().any(|t| t == table),
            "{table} missing from {tables:?}"
        );
    }
    assert!(
        !tables.iter().any(|t| t == "_sqlx_migrations"),
        "{tables:?}"
    );
    let applied: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\"._cqrs_migrations WHERE success"
    )))
    .fetch_one(&pool)
    .await
    .expect("count migrations");
    assert_eq!(
        applied,
        i64::try_from(cqrs_postgres::MIGRATOR.iter().count()).expect("count")
    );

    // The pool's connections kept their search_path: the store still works and nothing
    // landed in `public`.
    store
        .append(AppendRequest::new("s", "1", 0, vec![event()]))
        .await
        .expect("append");
    let search_path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&pool)
        .await
        .expect("search_path");
    assert!(!search_path.contains(&schema), "{search_path}");
    common::drop_schema(&pool, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_isolate_stores_on_one_database() {
    let a = TestStore::new("isoa").await;
    let b = TestStore::on_pool(a.pool().clone(), &common::unique_schema("isob")).await;
    a.store
        .append(AppendRequest::new("s", "1", 0, vec![event()]))
        .await
        .expect("append a");
    b.store
        .append(AppendRequest::new("s", "1", 0, vec![event()]))
        .await
        .expect("the same stream in another schema is another stream");
    assert_eq!(a.store.load("s", "1", 0).await.expect("load").len(), 1);
    assert_eq!(b.store.load("s", "1", 0).await.expect("load").len(), 1);
    common::drop_schema(b.pool(), b.store.schema()).await;
    a.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_schema_names_are_refused() {
    let pool = sqlx::PgPool::connect_lazy(&common::database_url()).expect("lazy pool");
    for name in [
        "",
        "Upper",
        "a-b",
        "x\"; DROP SCHEMA public; --",
        "pg_toast",
        "1st",
    ] {
        match PgEventStore::builder(pool.clone()).schema(name).build() {
            Err(Error::InvalidName { what: "schema", .. }) => {}
            other => panic!("{name:?} accepted: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_notify_their_position_after_commit() {
    notifies_appends(PgNotify::AfterCommit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_notify_their_position_in_their_transaction() {
    notifies_appends(PgNotify::InTransaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_connection_the_server_ended_is_replaced() {
    let t = TestStore::new("notify_kill").await;
    let mut listener = PgListener::connect(&common::database_url())
        .await
        .expect("listener");
    listener.listen(t.store.channel()).await.expect("listen");
    for round in 0..3_u64 {
        let outcome = t
            .store
            .append(AppendRequest::new("s", "1", round, vec![event()]))
            .await
            .expect("append");
        assert_eq!(
            next_announced(&mut listener, t.store.channel()).await,
            outcome.position,
            "round {round}"
        );
        // End the notifier's session (the pool's connections carry the same name).
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND query LIKE 'SELECT pg_notify%' \
             AND pid <> pg_backend_pid()",
        )
        .bind(t.store.schema())
        .fetch_all(t.pool())
        .await
        .expect("terminate the notifier's session");
        assert_eq!(ended, vec![true], "round {round}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_can_be_turned_off() {
    let mut t = TestStore::new("quiet").await;
    t.store = common::reconfigured(&t.store, |b| b.notify(PgNotify::Off));
    let mut listener = PgListener::connect(&common::database_url())
        .await
        .expect("listener");
    listener.listen(t.store.channel()).await.expect("listen");
    t.store
        .append(AppendRequest::new("s", "1", 0, vec![event()]))
        .await
        .expect("append");
    let quiet = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(quiet.is_err(), "notified although off: {quiet:?}");
    t.cleanup().await;
}

async fn notifies_appends(mode: PgNotify) {
    let mut t = TestStore::new("notify").await;
    t.store = common::reconfigured(&t.store, |b| b.notify(mode));
    let mut listener = PgListener::connect(&common::database_url())
        .await
        .expect("listener");
    listener.listen(t.store.channel()).await.expect("listen");
    assert_eq!(t.store.channel(), format!("{}_events", t.store.schema()));

    let outcome = t
        .store
        .append(AppendRequest::new("s", "1", 0, vec![event(), event()]))
        .await
        .expect("append");
    assert_eq!(
        next_announced(&mut listener, t.store.channel()).await,
        outcome.position
    );

    // A conflicting append notifies nothing.
    let conflict = t
        .store
        .append(AppendRequest::new("s", "1", 0, vec![event()]))
        .await;
    assert!(matches!(conflict, Err(CoreError::Conflict { .. })));
    let quiet = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(quiet.is_err(), "a failed append notified: {quiet:?}");
    t.cleanup().await;
}
