//! Two runner processes on the same projection: one owns it; SIGKILL the owner and the
//! other takes over within 5 seconds, with the view still exact.

mod common;
mod projection_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::TestStore;
use cqrs_core::{EventStore, Position};
use projection_support::{WorkerProcess, add, fold, observer, rows, run_worker_if_asked, table};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn worker_process() {
    run_worker_if_asked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survivor_takes_over_within_five_seconds() {
    let t = TestStore::with_pool_size("proj_failover", 6).await;
    let schema = t.store.schema().to_owned();
    let watcher = observer(&t.store).await;
    // Default claim interval (1 s), as a deployment would run.
    let claim = Duration::from_secs(1);
    let mut a = WorkerProcess::spawn(
        "worker_process",
        &schema,
        "runner-a",
        Duration::ZERO,
        100,
        claim,
    );
    let mut b = WorkerProcess::spawn(
        "worker_process",
        &schema,
        "runner-b",
        Duration::ZERO,
        100,
        claim,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let store = t.store.clone();
        let stop = Arc::clone(&stop);
        writers.spawn(async move {
            let mut last = Position::START;
            let mut version = 0;
            while !stop.load(Ordering::Relaxed) {
                last = add(&store, &format!("f-{w}"), version, 1).await;
                version += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            last
        });
    }

    let owner = common::eventually(WAIT, || async {
        watcher
            .status_of("balances")
            .await
            .ok()?
            .first()?
            .owner
            .clone()
    })
    .await
    .expect("one of the runners owns the projection");
    let (owner_process, survivor) = if owner == a.owner {
        (&mut a, b.owner.clone())
    } else {
        (&mut b, a.owner.clone())
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let killed_at = Instant::now();
    owner_process.kill();
    let kill_position = t.store.head().await.expect("head");
    let taken = common::eventually(Duration::from_secs(10), || async {
        let status = watcher.status_of("balances").await.ok()?;
        (status.first()?.owner.as_deref() == Some(survivor.as_str())).then(Instant::now)
    })
    .await
    .expect("the survivor takes over");
    let takeover = taken - killed_at;
    // The survivor also applies what was appended around the kill.
    let after = add(&t.store, "f-after", 0, 1).await;
    watcher
        .wait_for_named("balances", after.max(kill_position), WAIT)
        .await
        .expect("the survivor projects");
    let projecting = killed_at.elapsed();
    println!(
        "failover: {survivor} took ownership {:.0} ms after SIGKILL of {owner}; \
         projecting new events {:.0} ms after it",
        takeover.as_secs_f64() * 1000.0,
        projecting.as_secs_f64() * 1000.0,
    );
    assert!(
        takeover < Duration::from_secs(5),
        "takeover took {takeover:?}"
    );

    stop.store(true, Ordering::Relaxed);
    let mut last = after;
    while let Some(position) = writers.join_next().await {
        last = last.max(position.expect("writer"));
    }
    watcher
        .wait_for_named("balances", last, WAIT)
        .await
        .expect("caught up");
    assert_eq!(
        rows(t.pool(), &table::<1>(&schema)).await,
        fold(t.pool(), &schema).await
    );
    watcher.shutdown().await;
    drop((a, b));
    t.cleanup().await;
}
