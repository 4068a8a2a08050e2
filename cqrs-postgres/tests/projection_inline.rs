//! Inline projections: the view changes in the append's own transaction, so it is current
//! the moment the append returns, and a failing handler refuses the append.

mod common;
mod projection_support;

use std::sync::Arc;
use std::time::Duration;

use common::TestStore;
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{EventStore, Position};
use cqrs_postgres::{PgProjectionRunner, PgProjectionState};
use projection_support::{
    Balances, Faults, add, fold, rows, table, writers_see_each_append_at_once,
};
use serde_json::json;

async fn create_table(t: &TestStore, table: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (account text PRIMARY KEY, balance bigint NOT NULL, events bigint NOT NULL)"
    )))
    .execute(t.pool())
    .await
    .expect("create the view's table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_is_current_when_the_append_returns() {
    let t = TestStore::with_pool_size("proj_inline", 20).await;
    let schema = t.store.schema().to_owned();
    create_table(&t, &table::<1>(&schema)).await;
    let store = common::reconfigured(&t.store, |b| b.inline(Balances::<1>::new(&schema)));

    // No wait after an append: its statement carried the view's change.
    writers_see_each_append_at_once(&store, &table::<1>(&schema), "i").await;
    // Several events in one append, and events it does not want.
    let events = (0..5)
        .map(|_| NewEvent::new("Added", 2, json!({ "amount": 3 })))
        .collect();
    store
        .append(AppendRequest::new("counter", "many", 0, events))
        .await
        .expect("append five");
    let other = store
        .append(AppendRequest::new(
            "other",
            "o-1",
            0,
            vec![NewEvent::new("Unrelated", 1, json!({}))],
        ))
        .await
        .expect("append an unrelated event");
    assert_eq!(
        rows(t.pool(), &table::<1>(&schema)).await,
        fold(t.pool(), &schema).await
    );

    // Reported as inline, and waiting on it returns at once.
    let runner = PgProjectionRunner::builder(t.store.clone())
        .start()
        .await
        .expect("start");
    let status = runner.status_of("balances").await.expect("status");
    assert_eq!(status[0].state, PgProjectionState::Inline);
    runner
        .wait_for_named("balances", other.position, Duration::from_millis(1))
        .await
        .expect("an inline projection is always current");
    runner.shutdown().await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_inline_handler_refuses_the_append() {
    let t = TestStore::new("proj_inline_fail").await;
    let schema = t.store.schema().to_owned();
    create_table(&t, &table::<1>(&schema)).await;
    let faults = Arc::new(Faults::default());
    faults.fail_always("bad", 2);
    let store = common::reconfigured(&t.store, |b| {
        b.inline(Balances::<1>::new(&schema).with_faults(Arc::clone(&faults)))
    });

    add(&store, "bad", 0, 1).await;
    let two = vec![
        NewEvent::new("Added", 2, json!({ "amount": 1 })),
        NewEvent::new("Added", 2, json!({ "amount": 1 })),
    ];
    let error = store
        .append(AppendRequest::new("counter", "bad", 1, two.clone()))
        .await
        .expect_err("the handler fails on version 2");
    assert!(
        matches!(
            cqrs_postgres::Error::from_store(&error),
            Some(cqrs_postgres::Error::InlineHandler {
                projection: "balances",
                ..
            })
        ),
        "{error:?}"
    );
    // Nothing of it was written: not the events, not the view's change for version 3.
    assert_eq!(
        store.load("counter", "bad", 0).await.expect("load").len(),
        1
    );
    assert_eq!(
        rows(t.pool(), &table::<1>(&schema)).await,
        vec![("bad".to_owned(), 1, 1)]
    );
    // A conflict in the inline path is the usual typed conflict.
    let conflict = store
        .append(AppendRequest::new("counter", "bad", 0, two.clone()))
        .await
        .expect_err("stale expected version");
    assert!(conflict.is_conflict(), "{conflict:?}");

    faults.heal("bad", 2);
    let outcome = store
        .append(AppendRequest::new("counter", "bad", 1, two))
        .await
        .expect("append");
    assert!(outcome.position > Position::START);
    assert_eq!(
        rows(t.pool(), &table::<1>(&schema)).await,
        fold(t.pool(), &schema).await
    );
    t.cleanup().await;
}

/// An inline projection that keeps every envelope it is handed.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<std::sync::Mutex<Vec<cqrs_core::EventEnvelope<common::counter::Added>>>>,
}

impl cqrs_core::Projection for Recorder {
    const NAME: &'static str = "recorder";
    type Event = common::counter::Added;
    type Context = sqlx::PgConnection;
    type Error = std::convert::Infallible;

    async fn handle(
        &mut self,
        _cx: &mut sqlx::PgConnection,
        event: &cqrs_core::EventEnvelope<common::counter::Added>,
    ) -> Result<(), std::convert::Infallible> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(event.clone());
        Ok(())
    }
}

impl cqrs_postgres::PgView for Recorder {
    /// It keeps no table: nothing to empty.
    async fn reset(&mut self, _: &mut sqlx::PgConnection) -> Result<(), std::convert::Infallible> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_see_each_event_as_the_log_stores_it() {
    let t = TestStore::new("proj_inline_env").await;
    let recorder = Recorder::default();
    let store = common::reconfigured(&t.store, |b| b.inline(recorder.clone()));
    // Single-event appends (their place comes with the append's outcome) and appends
    // of several events (looked up), on two streams.
    add(&store, "one", 0, 1).await;
    add(&store, "one", 1, 2).await;
    projection_support::add_many(&store, "many", 0, 7, 3, 5).await;
    add(&store, "one", 2, 3).await;

    let mut stored = Vec::new();
    for stream in ["one", "many"] {
        for event in store.load("counter", stream, 0).await.expect("load") {
            stored.push(event.decode::<common::counter::Added>().expect("decode"));
        }
    }
    let mut seen = recorder
        .seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    stored.sort_by_key(|e| e.position);
    seen.sort_by_key(|e| e.position);
    assert_eq!(seen.len(), 10);
    for (seen, stored) in seen.iter().zip(&stored) {
        assert_eq!(seen.position, stored.position);
        assert_eq!(seen.event_id, stored.event_id);
        assert_eq!(
            (&seen.stream_id, seen.stream_version),
            (&stored.stream_id, stored.stream_version)
        );
        assert_eq!(seen.recorded_at, stored.recorded_at);
        assert_eq!(seen.payload, stored.payload);
        assert_eq!(seen.metadata, stored.metadata);
    }
    t.cleanup().await;
}

/// The projections' rows, as `(name, version, inline)`.
async fn registered(t: &TestStore) -> Vec<(String, i32, bool)> {
    sqlx::query_as(sqlx::AssertSqlSafe(t.sql(
        "SELECT name, version, inline FROM {schema}.projections ORDER BY name",
    )))
    .fetch_all(t.pool())
    .await
    .expect("projections")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_projections_are_registered_up_front_not_by_the_first_append() {
    let t = TestStore::with_pool_size("proj_inline_reg", 20).await;
    let schema = t.store.schema().to_owned();
    create_table(&t, &table::<1>(&schema)).await;
    let store = common::reconfigured(&t.store, |b| b.inline(Balances::<1>::new(&schema)));
    assert!(registered(&t).await.is_empty());

    // `migrate` registers them, before any append.
    store.migrate().await.expect("migrate");
    assert_eq!(registered(&t).await, [("balances".to_owned(), 1, true)]);
    assert_eq!(store.head().await.expect("head"), Position::START);

    // So does a runner's start, for a store that was not migrated by this process: it
    // reports them at once.
    sqlx::query(sqlx::AssertSqlSafe(
        t.sql("DELETE FROM {schema}.projections"),
    ))
    .execute(t.pool())
    .await
    .expect("forget the row");
    let fresh = common::reconfigured(&t.store, |b| b.inline(Balances::<1>::new(&schema)));
    let runner = PgProjectionRunner::builder(fresh.clone())
        .start()
        .await
        .expect("start");
    let status = runner.status_of("balances").await.expect("status");
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].state, PgProjectionState::Inline);
    runner.shutdown().await;

    // A store nobody registered: sixteen first appends at once share one registration,
    // and each is applied once.
    sqlx::query(sqlx::AssertSqlSafe(
        t.sql("DELETE FROM {schema}.projections"),
    ))
    .execute(t.pool())
    .await
    .expect("forget the row");
    let unregistered = common::reconfigured(&t.store, |b| b.inline(Balances::<1>::new(&schema)));
    let slowest = sixteen_first_appends(&unregistered, "first").await;
    // For comparison: the same on the store registered by the runner's start.
    let registered_first = sixteen_first_appends(&fresh, "again").await;
    println!(
        "16 concurrent first appends: slowest {:.1} ms on a store registering its inline \
         projection meanwhile, {:.1} ms on a store that registered it up front",
        slowest.as_secs_f64() * 1000.0,
        registered_first.as_secs_f64() * 1000.0
    );
    assert_eq!(registered(&t).await, [("balances".to_owned(), 1, true)]);
    assert_eq!(
        rows(t.pool(), &table::<1>(&schema)).await,
        fold(t.pool(), &schema).await
    );
    t.cleanup().await;
}

/// Sixteen appends at once, each to a new stream `<prefix>-<n>`; the slowest one's time.
async fn sixteen_first_appends(store: &cqrs_postgres::PgEventStore, prefix: &str) -> Duration {
    let mut firsts = tokio::task::JoinSet::new();
    for w in 0..16 {
        let store = store.clone();
        let stream = format!("{prefix}-{w}");
        firsts.spawn(async move {
            let begun = std::time::Instant::now();
            add(&store, &stream, 0, 1).await;
            begun.elapsed()
        });
    }
    let mut slowest = Duration::ZERO;
    while let Some(joined) = firsts.join_next().await {
        slowest = slowest.max(joined.expect("first append"));
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_unit_is_applied_to_an_inline_view_whole_or_not_at_all() {
    use cqrs_core::store::AtomicAppendRequest;
    let t = TestStore::new("proj_inline_unit").await;
    let schema = t.store.schema().to_owned();
    create_table(&t, &table::<1>(&schema)).await;
    let faults = Arc::new(Faults::default());
    let store = common::reconfigured(&t.store, |b| {
        b.inline(Balances::<1>::new(&schema).with_faults(Arc::clone(&faults)))
    });
    let entry = |amount: u64| NewEvent::new("Added", 2, json!({ "amount": amount }));
    let unit = |a: u64, b: u64| {
        AtomicAppendRequest::new(vec![
            AppendRequest::new("counter", "from", a, vec![entry(5), entry(1)]),
            AppendRequest::new("counter", "to", b, vec![entry(7)]),
        ])
    };
    store.append_atomic(unit(0, 0)).await.expect("a unit");
    assert_eq!(
        rows(t.pool(), &table::<1>(&schema)).await,
        [("from".to_owned(), 6, 2), ("to".to_owned(), 7, 1)]
    );
    // The view refuses an event of the second stream: nothing of the unit is written.
    faults.fail_always("to", 2);
    let refused = store.append_atomic(unit(2, 1)).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        store.load("counter", "from", 0).await.expect("load").len(),
        2
    );
    assert_eq!(
        rows(t.pool(), &table::<1>(&schema)).await,
        fold(t.pool(), &schema).await
    );
    faults.heal("to", 2);
    store.append_atomic(unit(2, 1)).await.expect("healed");
    assert_eq!(
        rows(t.pool(), &table::<1>(&schema)).await,
        fold(t.pool(), &schema).await
    );
    t.cleanup().await;
}
