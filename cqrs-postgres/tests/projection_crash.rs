//! Crashes at random points: a failing handler, a worker whose runtime is torn down
//! mid-batch, a worker process killed with SIGKILL. After restart the view always equals
//! the fold of the whole log: nothing skipped, nothing applied twice.

mod common;
mod projection_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Rng, TestStore};
use cqrs_core::Position;
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgRunnerTuning};
use projection_support::{
    Balances, Faults, WorkerProcess, add, fold, observer, rows, run_worker_if_asked, table,
};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn worker_process() {
    run_worker_if_asked();
}

/// Writers appending to `streams` streams until `stop`; returns the last position.
fn spawn_writers(
    store: &PgEventStore,
    streams: u64,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinSet<Position> {
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..streams {
        let store = store.clone();
        let stop = Arc::clone(stop);
        writers.spawn(async move {
            let mut last = Position::START;
            let mut version = 0;
            while !stop.load(Ordering::Relaxed) {
                last = add(&store, &format!("c-{w}"), version, version % 7 + 1).await;
                version += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            last
        });
    }
    writers
}

async fn stop_writers(stop: &AtomicBool, mut writers: tokio::task::JoinSet<Position>) -> Position {
    stop.store(true, Ordering::Relaxed);
    let mut last = Position::START;
    while let Some(position) = writers.join_next().await {
        last = last.max(position.expect("writer"));
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_random_crashes_never_skip_or_repeat_an_event() {
    let t = TestStore::with_pool_size("proj_crash", 6).await;
    let schema = t.store.schema().to_owned();
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) * 7919 + 17);
    println!("crash seed {seed} (set CRASH_SEED to replay)");
    let mut rng = Rng::new(seed);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&t.store, 4, &stop);
    let faults = Arc::new(Faults::default());

    for crash in 0..20 {
        let batch = usize::try_from(rng.below(40) + 2).unwrap_or(10);
        let lifetime = Duration::from_millis(rng.below(250) + 30);
        if rng.below(2) == 0 {
            // A handler that fails once on an event a little ahead of the writers.
            let stream = format!("c-{}", rng.below(4));
            let version: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT COALESCE(max(stream_version), 0) FROM \"{schema}\".events \
                 WHERE stream_id = $1"
            )))
            .bind(&stream)
            .fetch_one(t.pool())
            .await
            .expect("stream version");
            let at = u64::try_from(version).unwrap_or(0) + rng.below(5) + 1;
            faults.fail_once(&stream, at);
        }
        // The worker runs on a runtime of its own, torn down without warning: every task
        // stops at whatever await it is at, mid-batch included, and its connections drop.
        let worker_schema = schema.clone();
        let worker_faults = Arc::clone(&faults);
        let crashed = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let runner = runtime.block_on(async {
                let pool = common::pool(3, &worker_schema).await;
                let store = PgEventStore::builder(pool)
                    .schema(&worker_schema)
                    .build()
                    .expect("schema");
                let runner = PgProjectionRunner::builder(store)
                    .tuning(
                        PgRunnerTuning::default()
                            .batch_size(batch)
                            .claim_interval(Duration::from_millis(20)),
                    )
                    .retries(3, Duration::from_millis(5))
                    .view(
                        Balances::<1>::new(&worker_schema)
                            .with_faults(worker_faults)
                            .with_delay(Duration::from_micros(300)),
                    )
                    .start()
                    .await
                    .expect("start");
                tokio::time::sleep(lifetime).await;
                runner
            });
            // The runner is still alive when its runtime goes: no graceful shutdown.
            runtime.shutdown_background();
            drop(runner);
        });
        crashed.join().expect("worker thread");
        println!("crash {crash}: batch {batch}, after {lifetime:?}");
    }

    let last = stop_writers(&stop, writers).await;
    let runner = PgProjectionRunner::builder(t.store.clone())
        .view(Balances::<1>::new(&schema))
        .start()
        .await
        .expect("start");
    runner
        .wait_for_named("balances", last, WAIT)
        .await
        .expect("caught up");
    let expected = fold(t.pool(), &schema).await;
    assert!(expected.iter().map(|r| r.2).sum::<i64>() > 100);
    assert_eq!(rows(t.pool(), &table::<1>(&schema)).await, expected);
    runner.shutdown().await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_killed_with_sigkill_never_skip_or_repeat_an_event() {
    let t = TestStore::with_pool_size("proj_kill", 6).await;
    let schema = t.store.schema().to_owned();
    let mut rng = Rng::new(u64::from(std::process::id()) + 99);
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&t.store, 4, &stop);
    let watcher = observer(&t.store).await;

    for kill in 0..6 {
        let mut worker = WorkerProcess::spawn(
            "worker_process",
            &schema,
            &format!("killed-{kill}"),
            Duration::from_micros(500),
            usize::try_from(rng.below(30) + 5).unwrap_or(10),
            Duration::from_millis(50),
        );
        // Wait until it owns the projection and has applied something, then let it run
        // a random while into its batches.
        let owner = worker.owner.clone();
        common::eventually(WAIT, || async {
            let status = watcher.status_of("balances").await.ok()?;
            (status.first()?.owner.as_deref() == Some(owner.as_str())).then_some(())
        })
        .await
        .expect("the worker takes the projection");
        tokio::time::sleep(Duration::from_millis(rng.below(400) + 20)).await;
        worker.kill();
        println!("SIGKILL {kill}");
    }

    let last = stop_writers(&stop, writers).await;
    let _final = WorkerProcess::spawn(
        "worker_process",
        &schema,
        "survivor",
        Duration::ZERO,
        100,
        Duration::from_millis(50),
    );
    watcher
        .wait_for_named("balances", last, WAIT)
        .await
        .expect("caught up");
    assert_eq!(
        rows(t.pool(), &table::<1>(&schema)).await,
        fold(t.pool(), &schema).await
    );
    watcher.shutdown().await;
    drop(_final);
    t.cleanup().await;
}
