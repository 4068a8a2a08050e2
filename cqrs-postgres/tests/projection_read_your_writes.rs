//! Read-your-writes under 16 concurrent writers: once `wait_for` returns on a command's
//! position, a query of the view sees that command's write, every time.

mod common;
mod projection_support;

use std::time::{Duration, Instant};

use common::TestStore;
use cqrs_core::{ProjectionError, Token};
use cqrs_postgres::PgProjectionRunner;
use projection_support::{Balances, add, fold, rows, served_view};

const WRITERS: u64 = 16;
const COMMANDS: u64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_wait_the_view_holds_the_write_every_time() {
    let t = TestStore::with_pool_size("proj_ryw", 24).await;
    let schema = t.store.schema().to_owned();
    let runner = PgProjectionRunner::builder(t.store.clone())
        .view(Balances::<1>::new(&schema))
        .start()
        .await
        .expect("start");
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let store = t.store.clone();
        let runner = runner.clone();
        let pool = t.pool().clone();
        let view = served_view(&schema);
        writers.spawn(async move {
            let account = format!("w-{w}");
            let mut waits = Vec::new();
            for version in 0..COMMANDS {
                let position = add(&store, &account, version, 1).await;
                let begun = Instant::now();
                runner
                    .wait_for::<Balances>(position, Duration::from_secs(10))
                    .await
                    .expect("the projection passes the write");
                waits.push(begun.elapsed());
                let seen: (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT balance, events FROM {view} WHERE account = $1"
                )))
                .bind(&account)
                .fetch_one(&pool)
                .await
                .expect("the write is in the view");
                let expected = i64::try_from(version + 1).unwrap_or(i64::MAX);
                assert_eq!(
                    seen,
                    (expected, expected),
                    "{account} after command {version}"
                );
            }
            waits
        });
    }
    let mut waits = Vec::new();
    while let Some(joined) = writers.join_next().await {
        waits.extend(joined.expect("writer"));
    }
    waits.sort_unstable();
    println!(
        "read-your-writes: {} commands by {WRITERS} writers in {:.2} s; wait p50 {:.1} ms, p99 {:.1} ms",
        waits.len(),
        started.elapsed().as_secs_f64(),
        waits[waits.len() / 2].as_secs_f64() * 1000.0,
        waits[waits.len() * 99 / 100].as_secs_f64() * 1000.0,
    );
    assert_eq!(
        rows(t.pool(), &served_view(&schema)).await,
        fold(t.pool(), &schema).await
    );
    runner.shutdown().await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_a_projection_no_runner_knows_is_an_error_not_a_return() {
    let t = TestStore::new("proj_unknown").await;
    let schema = t.store.schema().to_owned();
    let runner = PgProjectionRunner::builder(t.store.clone())
        .view(Balances::<1>::new(&schema))
        .start()
        .await
        .expect("start");
    let position = add(&t.store, "a", 0, 1).await;
    let begun = Instant::now();
    match runner
        .wait_for_named("balancse", position, Duration::from_millis(300))
        .await
    {
        Err(ProjectionError::Unknown { projection }) => assert_eq!(projection, "balancse"),
        other => panic!("expected Unknown, got {other:?}"),
    }
    assert!(
        begun.elapsed() >= Duration::from_millis(300),
        "it waited for a registration"
    );
    runner.shutdown().await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_begun_before_the_projection_is_registered_returns_once_it_has_caught_up() {
    let t = TestStore::new("proj_later").await;
    let schema = t.store.schema().to_owned();
    // A runner with nothing to run yet: the wait is for a view another process starts.
    let waiter = PgProjectionRunner::builder(t.store.clone())
        .start()
        .await
        .expect("start");
    let first = add(&t.store, "a", 0, 1).await;
    let second = add(&t.store, "b", 0, 2).await;
    // Two commands' tokens, joined: the wait covers both.
    let token: Token = [first, second].into_iter().collect();
    assert_eq!(token.position(), first.max(second));
    let wait = tokio::spawn({
        let waiter = waiter.clone();
        async move {
            waiter
                .wait_for::<Balances>(token, Duration::from_secs(10))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!wait.is_finished(), "no runner runs the view yet");
    let runner = PgProjectionRunner::builder(t.store.clone())
        .view(Balances::<1>::new(&schema))
        .start()
        .await
        .expect("start");
    wait.await
        .expect("join")
        .expect("the wait ends once the view has both writes");
    let view = rows(t.pool(), &served_view(&schema)).await;
    assert_eq!(view.len(), 2, "both writes are in the view: {view:?}");
    runner.shutdown().await;
    waiter.shutdown().await;
    t.cleanup().await;
}
