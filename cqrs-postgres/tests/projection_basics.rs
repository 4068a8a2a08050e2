//! The projection runner on one process: views equal the fold of the log, positions the
//! projection does not want still count as passed, status reports, document views.

mod common;
mod projection_support;

use std::time::Duration;

use common::TestStore;
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{EventEnvelope, EventStore, Position};
use cqrs_postgres::{PgDocumentView, PgProjectionRunner, PgProjectionState, PgRunnerTuning};
use projection_support::{Balances, add_many, caught_up, fold, rows, served_view};
use serde::{Deserialize, Serialize};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_equals_the_fold_of_the_log() {
    let t = TestStore::new("proj_basic").await;
    let schema = t.store.schema().to_owned();
    let runner = PgProjectionRunner::builder(t.store.clone())
        .owner("basic-runner")
        .tuning(PgRunnerTuning::default().batch_size(7))
        .view(Balances::<1>::new(&schema))
        .start()
        .await
        .expect("start");

    // Five writers at once, each on its own stream, while the projection runs.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..5 {
        let store = t.store.clone();
        writers.spawn(async move { add_many(&store, &format!("acc-{w}"), 0, 60, 3, w + 1).await });
    }
    let mut last = Position::START;
    while let Some(position) = writers.join_next().await {
        last = last.max(position.expect("writer"));
    }
    runner
        .wait_for_named("balances", last, WAIT)
        .await
        .expect("caught up");

    assert_eq!(
        rows(t.pool(), &served_view(&schema)).await,
        fold(t.pool(), &schema).await
    );
    let status = runner.status_of("balances").await.expect("status");
    assert_eq!(status.len(), 1);
    let status = &status[0];
    assert_eq!(status.state, PgProjectionState::CaughtUp);
    assert_eq!(status.owner.as_deref(), Some("basic-runner"));
    assert_eq!(status.lag_events, 0);
    assert!(status.active);
    assert!(status.position >= last);
    assert_eq!(status.error, None);

    runner.shutdown().await;
    let status = runner.status_of("balances").await.expect("status");
    assert_eq!(status[0].state, PgProjectionState::Stopped);
    assert_eq!(status[0].owner, None);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_it_does_not_want_still_count_as_passed() {
    let t = TestStore::new("proj_skip").await;
    let schema = t.store.schema().to_owned();
    let runner = PgProjectionRunner::builder(t.store.clone())
        .view(Balances::<1>::new(&schema))
        .start()
        .await
        .expect("start");
    let other = t
        .store
        .append(AppendRequest::new(
            "other",
            "o-1",
            0,
            vec![NewEvent::new("Unrelated", 1, json!({}))],
        ))
        .await
        .expect("append");
    runner
        .wait_for_named("balances", other.position, WAIT)
        .await
        .expect("an unwanted event is passed too");
    let status = runner.status_of("balances").await.expect("status");
    assert_eq!(status[0].lag_events, 0);
    assert!(status[0].position >= other.position);

    // Waiting for a position the log has not reached times out, typed.
    let beyond = Position::new(other.position.commit() + 1_000_000, 0);
    let error = runner
        .wait_for_named("balances", beyond, Duration::from_millis(300))
        .await
        .expect_err("cannot pass a position that does not exist");
    assert!(
        matches!(error, cqrs_core::ProjectionError::Timeout { ref projection, target, reached }
            if projection == "balances" && target == beyond && reached >= other.position),
        "{error:?}"
    );
    runner.shutdown().await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_wanting_few_events_walks_the_log_in_windows() {
    let t = TestStore::new("proj_sparse").await;
    let schema = t.store.schema().to_owned();
    let runner = PgProjectionRunner::builder(t.store.clone())
        .tuning(PgRunnerTuning::default().batch_size(7))
        .view(Balances::<1>::new(&schema))
        .start()
        .await
        .expect("start");
    let mut last = Position::START;
    for i in 0..12_u64 {
        let noise: Vec<NewEvent> = (0..23)
            .map(|n| NewEvent::new("Unrelated", 1, json!({ "n": n })))
            .collect();
        t.store
            .append(AppendRequest::new("other", format!("o-{i}"), 0, noise))
            .await
            .expect("append unrelated events");
        last = projection_support::add(&t.store, "wanted", i, i + 1).await;
    }
    runner
        .wait_for_named("balances", last, WAIT)
        .await
        .expect("caught up");
    assert_eq!(
        rows(t.pool(), &served_view(&schema)).await,
        vec![("wanted".to_owned(), 78, 12)]
    );
    runner.shutdown().await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_projections_run_too() {
    let t = TestStore::new("proj_plain").await;
    let schema = t.store.schema().to_owned();
    let view = Balances::<1>::new(&schema);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {} (account text PRIMARY KEY, balance bigint NOT NULL, events bigint NOT NULL)",
        view.table
    )))
    .execute(t.pool())
    .await
    .expect("create the table");
    let table = view.table.clone();
    let runner = PgProjectionRunner::builder(t.store.clone())
        .tuning(PgRunnerTuning::default().synchronous_commit(true))
        .projection(view)
        .start()
        .await
        .expect("start");
    let last = add_many(&t.store, "p-1", 0, 25, 4, 2).await;
    caught_up(&runner, "balances", last, WAIT).await;
    assert_eq!(rows(t.pool(), &table).await, fold(t.pool(), &schema).await);
    runner.shutdown().await;
    t.cleanup().await;
}

/// One document per counter stream.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct CounterSummary {
    total: u64,
    additions: u32,
    last_version: u64,
}

impl cqrs_core::Document for CounterSummary {
    const NAME: &'static str = "counter_summaries";
    type Event = common::counter::Added;

    fn apply(&mut self, event: &EventEnvelope<common::counter::Added>) {
        self.total += event.payload.amount;
        self.additions += 1;
        self.last_version = event.stream_version;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_view_needs_no_sql() {
    let t = TestStore::new("proj_doc").await;
    let runner = PgProjectionRunner::builder(t.store.clone())
        .tuning(PgRunnerTuning::default().batch_size(10))
        .view(PgDocumentView::<CounterSummary>::new(&t.store).expect("valid name"))
        .start()
        .await
        .expect("start");
    add_many(&t.store, "d-1", 0, 30, 7, 3).await;
    let last = add_many(&t.store, "d-2", 0, 5, 5, 10).await;
    runner
        .wait_for::<PgDocumentView<CounterSummary>>(last, WAIT)
        .await
        .expect("caught up");
    let one = PgDocumentView::<CounterSummary>::get(&t.store, "d-1")
        .await
        .expect("get");
    assert_eq!(
        one,
        Some(CounterSummary {
            total: 90,
            additions: 30,
            last_version: 30
        })
    );
    let all = PgDocumentView::<CounterSummary>::all(&t.store)
        .await
        .expect("all");
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].1.total, 50);
    assert_eq!(
        PgDocumentView::<CounterSummary>::get(&t.store, "nobody")
            .await
            .expect("get"),
        None
    );
    runner.shutdown().await;
    t.cleanup().await;
}

#[tokio::test]
async fn document_views_refuse_names_that_are_not_plain_identifiers() {
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Bad;
    impl cqrs_core::Document for Bad {
        const NAME: &'static str = "Robert'); DROP TABLE students;--";
        type Event = common::counter::Added;
        fn apply(&mut self, _: &EventEnvelope<common::counter::Added>) {}
    }
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Clash;
    impl cqrs_core::Document for Clash {
        const NAME: &'static str = "events";
        type Event = common::counter::Added;
        fn apply(&mut self, _: &EventEnvelope<common::counter::Added>) {}
    }
    let pool =
        sqlx::PgPool::connect_lazy("postgres://postgres@127.0.0.1/postgres").expect("lazy pool");
    let store = cqrs_postgres::PgEventStore::new(pool);
    assert!(PgDocumentView::<Bad>::new(&store).is_err());
    assert!(PgDocumentView::<Clash>::new(&store).is_err());
}

/// A projection whose name is `N`'s, doing nothing.
struct Named<N>(std::marker::PhantomData<N>);

trait Name: Send + 'static {
    const NAME: &'static str;
}

impl<N: Name> cqrs_core::Projection for Named<N> {
    const NAME: &'static str = N::NAME;
    type Event = common::counter::Added;
    type Context = sqlx::PgConnection;
    type Error = std::convert::Infallible;

    async fn handle(
        &mut self,
        _: &mut sqlx::PgConnection,
        _: &EventEnvelope<common::counter::Added>,
    ) -> Result<(), std::convert::Infallible> {
        Ok(())
    }
}

#[tokio::test]
async fn projection_names_too_long_or_with_spaces_are_refused_before_anything_runs() {
    struct Long;
    impl Name for Long {
        // 320 bytes: past the 128 a name may have (a name travels in notifications,
        // whose payloads stop at 8,000 bytes).
        const NAME: &'static str = concat!(
            "a_very_long_projection_name_that_goes_on_and_on_and_on_",
            "a_very_long_projection_name_that_goes_on_and_on_and_on_",
            "a_very_long_projection_name_that_goes_on_and_on_and_on_",
            "a_very_long_projection_name_that_goes_on_and_on_and_on_",
            "a_very_long_projection_name_that_goes_on_and_on_and_on_",
            "a_very_long_projection_name_that_goes_on_and_on_and_on_"
        );
    }
    struct Spaced;
    impl Name for Spaced {
        const NAME: &'static str = "my balances";
    }
    let t = TestStore::new("proj_names").await;
    let refused = |error: cqrs_postgres::Error| {
        matches!(
            error,
            cqrs_postgres::Error::InvalidName {
                what: "projection",
                ..
            }
        )
    };
    let long = PgProjectionRunner::builder(t.store.clone())
        .projection(Named::<Long>(std::marker::PhantomData))
        .start()
        .await;
    assert!(long.is_err_and(refused), "a 320-byte name");
    let spaced = PgProjectionRunner::builder(t.store.clone())
        .projection(Named::<Spaced>(std::marker::PhantomData))
        .start()
        .await;
    assert!(spaced.is_err_and(refused), "a name with a space");
    let (registered,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(
        t.sql("SELECT count(*) FROM {schema}.projections"),
    ))
    .fetch_one(t.pool())
    .await
    .expect("count");
    assert_eq!(registered, 0, "nothing was registered");
    assert!(
        cqrs_postgres::PgInlineSql::new("my view", "INSERT INTO v SELECT 1 FROM appended")
            .is_err_and(refused)
    );
    t.cleanup().await;
}

#[test]
fn runner_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PgProjectionRunner>();
    assert_send_sync::<cqrs_postgres::PgProjectionStatus>();
    assert_send_sync::<cqrs_postgres::Error>();
    assert_send_sync::<PgDocumentView<CounterSummary>>();
}
