//! Inline SQL projections: the view's statement runs inside the append statement, so the
//! view is current the moment the append returns, a refused append changes nothing, and
//! a statement that fails refuses the append.

mod common;
mod projection_support;

use std::time::Duration;

use common::TestStore;
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{Error, EventStore};
use cqrs_postgres::{PgInlineSql, PgProjectionRunner, PgProjectionState};
use projection_support::{
    Balances, Rows, add, add_many, fold, rows, table, writers_see_each_append_at_once,
};
use serde_json::json;
use uuid::Uuid;

/// The balance view of the projection tests (account, balance, events), kept by SQL.
fn balances_sql(table: &str) -> PgInlineSql {
    PgInlineSql::new(
        "balances_sql",
        format!(
            "INSERT INTO {table} AS b (account, balance, events) \
             SELECT stream_id, sum((payload->>'amount')::bigint), count(*) \
             FROM appended WHERE stream_type = 'counter' AND event_type = 'Added' \
             GROUP BY stream_id \
             ON CONFLICT (account) DO UPDATE \
             SET balance = b.balance + excluded.balance, events = b.events + excluded.events"
        ),
    )
    .expect("a valid inline statement")
}

async fn create_table(t: &TestStore, table: &str, check: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (account text PRIMARY KEY, balance bigint NOT NULL {check}, \
         events bigint NOT NULL)"
    )))
    .execute(t.pool())
    .await
    .expect("create the view's table");
}

async fn balance(t: &TestStore, table: &str, account: &str) -> Option<(i64, i64)> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT balance, events FROM {table} WHERE account = $1"
    )))
    .bind(account)
    .fetch_optional(t.pool())
    .await
    .expect("read the view")
}

fn inline_sql_error(error: &Error) -> Option<&cqrs_postgres::Error> {
    cqrs_postgres::Error::from_store(error)
        .filter(|e| matches!(e, cqrs_postgres::Error::InlineSql { .. }))
}

async fn events_in_log(t: &TestStore) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".events",
        t.store.schema()
    )))
    .fetch_one(t.pool())
    .await
    .expect("count the log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_is_current_when_the_append_returns() {
    let t = TestStore::with_pool_size("proj_sql", 20).await;
    let schema = t.store.schema().to_owned();
    let table = table::<1>(&schema);
    create_table(&t, &table, "").await;
    let store = common::reconfigured(&t.store, |b| b.inline_sql(balances_sql(&table)));

    // No wait after an append: its statement carried the view's change.
    writers_see_each_append_at_once(&store, &table, "s").await;
    // Appends of several events of one stream (folded by the statement's GROUP BY), and
    // an event the statement leaves out.
    add_many(&store, "many", 0, 12, 5, 3).await;
    let other = store
        .append(AppendRequest::new(
            "other",
            "o-1",
            0,
            vec![NewEvent::new("Unrelated", 1, json!({ "amount": 100 }))],
        ))
        .await
        .expect("append an unrelated event");
    assert_eq!(rows(t.pool(), &table).await, fold(t.pool(), &schema).await);
    assert_eq!(balance(&t, &table, "many").await, Some((36, 12)));

    // Reported as inline, and waiting on it returns at once.
    let runner = PgProjectionRunner::builder(t.store.clone())
        .start()
        .await
        .expect("start");
    let status = runner.status_of("balances_sql").await.expect("status");
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].state, PgProjectionState::Inline);
    runner
        .wait_for_named("balances_sql", other.position, Duration::from_millis(1))
        .await
        .expect("an inline projection is always current");
    runner.shutdown().await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_that_writes_nothing_changes_nothing() {
    let t = TestStore::new("proj_sql_none").await;
    let schema = t.store.schema().to_owned();
    let table = table::<1>(&schema);
    create_table(&t, &table, "").await;
    let store = common::reconfigured(&t.store, |b| b.inline_sql(balances_sql(&table)));
    let one = |amount: u64| vec![NewEvent::new("Added", 2, json!({ "amount": amount }))];

    add(&store, "acc", 0, 5).await;
    // A stale expected version: a conflict, as without the projection.
    let conflict = store
        .append(AppendRequest::new("counter", "acc", 0, one(7)))
        .await
        .expect_err("stale expected version");
    assert!(conflict.is_conflict(), "{conflict:?}");
    assert_eq!(balance(&t, &table, "acc").await, Some((5, 1)));

    // A command repeated: the original outcome, the view changed once.
    let command = AppendRequest::new("counter", "acc", 1, one(10)).with_command_id(Uuid::new_v4());
    let first = store.append(command.clone()).await.expect("first");
    let again = store.append(command).await.expect("repeated");
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(again.position, first.position);
    assert_eq!(balance(&t, &table, "acc").await, Some((15, 2)));

    // An event id already in the log: typed as without the projection.
    let reused = NewEvent::new("Added", 2, json!({ "amount": 1 }));
    let event_id = reused.event_id;
    store
        .append(AppendRequest::new(
            "counter",
            "other",
            0,
            vec![reused.clone()],
        ))
        .await
        .expect("append");
    let duplicate = store
        .append(AppendRequest::new("counter", "third", 0, vec![reused]))
        .await
        .expect_err("the event id is taken");
    assert!(
        matches!(duplicate, Error::DuplicateEventId { event_id: id } if id == event_id),
        "{duplicate:?}"
    );
    assert_eq!(balance(&t, &table, "third").await, None);
    assert_eq!(rows(t.pool(), &table).await, fold(t.pool(), &schema).await);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_refuses_the_append() {
    let t = TestStore::new("proj_sql_fail").await;
    let schema = t.store.schema().to_owned();
    let table = table::<1>(&schema);
    // The view refuses a balance above 10.
    create_table(&t, &table, "CHECK (balance <= 10)").await;
    let store = common::reconfigured(&t.store, |b| b.inline_sql(balances_sql(&table)));

    add(&store, "acc", 0, 4).await;
    let two = vec![
        NewEvent::new("Added", 2, json!({ "amount": 3 })),
        NewEvent::new("Added", 2, json!({ "amount": 4 })),
    ];
    let error = store
        .append(AppendRequest::new("counter", "acc", 1, two))
        .await
        .expect_err("the view's check refuses 11");
    match inline_sql_error(&error) {
        Some(cqrs_postgres::Error::InlineSql { projection, .. }) => {
            assert_eq!(projection, "balances_sql");
        }
        _ => panic!("not an inline SQL failure: {error:?}"),
    }
    // Nothing of it was written: not the events, not the view's change.
    assert_eq!(
        store.load("counter", "acc", 0).await.expect("load").len(),
        1
    );
    assert_eq!(balance(&t, &table, "acc").await, Some((4, 1)));

    // A payload the statement cannot read fails it the same way.
    let error = store
        .append(AppendRequest::new(
            "counter",
            "acc",
            1,
            vec![NewEvent::new("Added", 2, json!({ "amount": "lots" }))],
        ))
        .await
        .expect_err("'lots' is not a bigint");
    assert!(inline_sql_error(&error).is_some(), "{error:?}");

    // The stream goes on from where it was.
    add(&store, "acc", 1, 6).await;
    assert_eq!(balance(&t, &table, "acc").await, Some((10, 2)));
    assert_eq!(events_in_log(&t).await, 2);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_the_server_refuses_is_reported_before_anything_is_written() {
    let t = TestStore::new("proj_sql_bad").await;
    let schema = t.store.schema().to_owned();
    let table = table::<1>(&schema);
    create_table(&t, &table, "").await;
    let cases = [
        format!(
            "INSERT INTO {table} (account, balance, events) SELECT stream_id, amount, 1 FROM appended"
        ),
        format!("INSERT INTO \"{schema}\".no_such_table SELECT stream_id FROM appended"),
        format!("INSERT INTO {table} VALUES (SELECT FROM appended"),
    ];
    for sql in cases {
        let store = common::reconfigured(&t.store, |b| {
            b.inline_sql(PgInlineSql::new("broken", sql.as_str()).expect("passes the local checks"))
        });
        let error = store
            .append(AppendRequest::new(
                "counter",
                "acc",
                0,
                vec![NewEvent::new("Added", 2, json!({ "amount": 1 }))],
            ))
            .await
            .expect_err("the server refuses the statement");
        match inline_sql_error(&error) {
            Some(cqrs_postgres::Error::InlineSql { projection, .. }) => {
                assert_eq!(projection, "broken", "{sql}");
            }
            _ => panic!("not an inline SQL failure for {sql}: {error:?}"),
        }
        assert_eq!(events_in_log(&t).await, 0, "{sql}");
    }
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_and_rust_inline_projections_share_the_append() {
    let t = TestStore::new("proj_sql_mixed").await;
    let schema = t.store.schema().to_owned();
    let by_sql = format!("\"{schema}\".balances_by_sql");
    create_table(&t, &table::<1>(&schema), "").await;
    create_table(&t, &by_sql, "").await;
    let faults = std::sync::Arc::new(projection_support::Faults::default());
    let store = common::reconfigured(&t.store, |b| {
        b.inline(Balances::<1>::new(&schema).with_faults(std::sync::Arc::clone(&faults)))
            .inline_sql(balances_sql(&by_sql))
    });

    add_many(&store, "a", 0, 9, 4, 2).await;
    add_many(&store, "b", 0, 3, 1, 5).await;
    // The Rust handler refuses version 4 of `b`: the SQL projection's change goes too.
    faults.fail_always("b", 4);
    let refused = store
        .append(AppendRequest::new(
            "counter",
            "b",
            3,
            vec![NewEvent::new("Added", 2, json!({ "amount": 1 }))],
        ))
        .await
        .expect_err("the handler fails");
    assert!(
        matches!(
            cqrs_postgres::Error::from_store(&refused),
            Some(cqrs_postgres::Error::InlineHandler { .. })
        ),
        "{refused:?}"
    );
    faults.heal("b", 4);
    add(&store, "b", 3, 1).await;

    let expected: Rows = fold(t.pool(), &schema).await;
    assert_eq!(rows(t.pool(), &table::<1>(&schema)).await, expected);
    assert_eq!(rows(t.pool(), &by_sql).await, expected);
    assert_eq!(balance(&t, &by_sql, "b").await, Some((16, 4)));
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_moved_to_another_schema_registers_its_inline_projections_there() {
    let first = TestStore::new("proj_sql_first").await;
    let second = TestStore::new("proj_sql_second").await;
    let table = table::<1>(first.store.schema());
    create_table(&first, &table, "").await;
    let store = common::reconfigured(&first.store, |b| b.inline_sql(balances_sql(&table)));
    add(&store, "a", 0, 1).await;

    let moved = store
        .to_builder()
        .schema(second.store.schema())
        .build()
        .expect("valid schema");
    add(&moved, "b", 0, 2).await;
    let runner = PgProjectionRunner::builder(second.store.clone())
        .start()
        .await
        .expect("start");
    let status = runner.status_of("balances_sql").await.expect("status");
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0].state, PgProjectionState::Inline);
    runner.shutdown().await;
    assert_eq!(rows(first.pool(), &table).await.len(), 2);
    second.cleanup().await;
    first.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_that_notifies_in_its_statement_keeps_the_view_too() {
    let t = TestStore::new("proj_sql_notify").await;
    let schema = t.store.schema().to_owned();
    let table = table::<1>(&schema);
    create_table(&t, &table, "").await;
    let store = common::reconfigured(&t.store, |b| {
        b.notify(cqrs_postgres::PgNotify::InTransaction)
            .inline_sql(balances_sql(&table))
    });
    let mut listener = sqlx::postgres::PgListener::connect(&common::database_url())
        .await
        .expect("listener");
    listener.listen(store.channel()).await.expect("listen");

    let position = add_many(&store, "n", 0, 3, 3, 4).await;
    let notification = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("notified in time")
        .expect("notification");
    assert_eq!(notification.payload(), position.to_string());
    assert_eq!(balance(&t, &table, "n").await, Some((12, 3)));
    t.cleanup().await;
}
