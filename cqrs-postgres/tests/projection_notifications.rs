//! Lost notifications: with the listening connection terminated again and again (or no
//! notifications at all), a projection is late by at most the polling interval.

mod common;
mod projection_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{TestStore, eventually};
use cqrs_postgres::{PgNotify, PgProjectionRunner, PgRunnerTuning};
use projection_support::{Balances, add, fold, rows, table};

const POLL: Duration = Duration::from_millis(300);
/// Scheduling, the batch itself and the status query, on a shared machine.
const SLACK: Duration = Duration::from_millis(250);

/// The listener's backends, by the application name the runner gives them.
async fn listener_backends(admin: &sqlx::PgPool, owner: &str) -> Vec<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
        .bind(format!("cqrs-listen {owner}"))
        .fetch_all(admin)
        .await
        .expect("pg_stat_activity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_listener_delays_a_projection_by_at_most_the_poll_interval() {
    let t = TestStore::new("proj_notify").await;
    let schema = t.store.schema().to_owned();
    let admin = common::pool(2, "notify-admin").await;
    let owner = format!("notify-{}", std::process::id());
    let runner = PgProjectionRunner::builder(t.store.clone())
        .owner(owner.clone())
        .tuning(PgRunnerTuning::default().poll_interval(POLL))
        .view(Balances::<1>::new(&schema))
        .start()
        .await
        .expect("start");
    let first = add(&t.store, "n-1", 0, 1).await;
    runner
        .wait_for_named("balances", first, Duration::from_secs(10))
        .await
        .expect("running");
    eventually(Duration::from_secs(10), || async {
        (!listener_backends(&admin, &owner).await.is_empty()).then_some(())
    })
    .await
    .expect("the listener is connected");

    // Kill the listener's backend over and over while appending: the notifications of
    // these appends are lost, and the listener is mostly down.
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let killer = {
        let admin = admin.clone();
        let owner = owner.clone();
        let stop = Arc::clone(&stop);
        let kills = Arc::clone(&kills);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for pid in listener_backends(&admin, &owner).await {
                    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                        .bind(pid)
                        .fetch_one(&admin)
                        .await
                        .unwrap_or(false);
                    if killed {
                        kills.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut worst = Duration::ZERO;
    for version in 1..=8 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let position = add(&t.store, "n-1", version, 1).await;
        let appended = Instant::now();
        runner
            .wait_for_named("balances", position, POLL + SLACK)
            .await
            .expect("projected within the poll interval");
        worst = worst.max(appended.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    killer.await.expect("killer");
    println!(
        "lost notifications: listener terminated {} times; worst delay {:.0} ms (poll interval {} ms)",
        kills.load(Ordering::Relaxed),
        worst.as_secs_f64() * 1000.0,
        POLL.as_millis()
    );
    assert!(kills.load(Ordering::Relaxed) > 0);

    // The listener comes back, and with it the prompt wake-ups.
    eventually(Duration::from_secs(10), || async {
        (!listener_backends(&admin, &owner).await.is_empty()).then_some(())
    })
    .await
    .expect("the listener reconnects");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let position = add(&t.store, "n-1", 9, 1).await;
    let appended = Instant::now();
    runner
        .wait_for_named("balances", position, Duration::from_secs(10))
        .await
        .expect("projected");
    println!(
        "after reconnecting: projected {:.1} ms after the append",
        appended.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(
        rows(t.pool(), &table::<1>(&schema)).await,
        fold(t.pool(), &schema).await
    );
    runner.shutdown().await;
    admin.close().await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notifications_polling_alone_keeps_the_projection_going() {
    let t = TestStore::new("proj_poll").await;
    let schema = t.store.schema().to_owned();
    let store = common::reconfigured(&t.store, |b| b.notify(PgNotify::Off));
    let runner = PgProjectionRunner::builder(store.clone())
        .tuning(PgRunnerTuning::default().poll_interval(POLL))
        .view(Balances::<1>::new(&schema))
        .start()
        .await
        .expect("start");
    let mut worst = Duration::ZERO;
    for version in 0..5 {
        let position = add(&store, "p-1", version, 2).await;
        let appended = Instant::now();
        runner
            .wait_for_named("balances", position, POLL + SLACK)
            .await
            .expect("projected within the poll interval");
        worst = worst.max(appended.elapsed());
    }
    println!(
        "no notifications: worst delay {:.0} ms",
        worst.as_secs_f64() * 1000.0
    );
    assert_eq!(
        rows(t.pool(), &table::<1>(&schema)).await,
        fold(t.pool(), &schema).await
    );
    runner.shutdown().await;
    t.cleanup().await;
}
