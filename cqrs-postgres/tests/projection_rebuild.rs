//! Rebuilds: a rebuilt view equals the view built live; a new version builds beside the
//! served one, which readers keep seeing until the new one has caught up.

mod common;
mod projection_support;

use std::time::Duration;

use common::{TestStore, eventually};
use cqrs_core::Position;
use cqrs_postgres::{PgProjectionRunner, PgProjectionState, PgRunnerTuning};
use projection_support::{Balances, add_many, fold, rows, served_view, table};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_equals_the_view_built_live() {
    let t = TestStore::new("proj_rebuild").await;
    let schema = t.store.schema().to_owned();
    let runner = PgProjectionRunner::builder(t.store.clone())
        .tuning(PgRunnerTuning::default().batch_size(25))
        .view(Balances::<1>::new(&schema).with_delay(Duration::from_micros(200)))
        .start()
        .await
        .expect("start");
    let mut last = Position::START;
    for s in 0..6 {
        last = last.max(add_many(&t.store, &format!("r-{s}"), 0, 80, 9, s + 1).await);
    }
    runner
        .wait_for_named("balances", last, WAIT)
        .await
        .expect("caught up");
    let live = rows(t.pool(), &table::<1>(&schema)).await;
    assert_eq!(live, fold(t.pool(), &schema).await);

    assert!(runner.rebuild::<Balances>().await.expect("rebuild"));
    let status = runner.status_of("balances").await.expect("status");
    assert_eq!(status[0].state, PgProjectionState::Rebuilding);
    // Writers go on during the rebuild.
    let more = add_many(&t.store, "r-late", 0, 40, 4, 3).await;
    let rebuilt = eventually(WAIT, || async {
        let status = runner.status_of("balances").await.ok()?;
        (status[0].state == PgProjectionState::CaughtUp && status[0].position >= more)
            .then(|| status[0].clone())
    })
    .await
    .expect("the rebuild catches up");
    assert_eq!(rebuilt.lag_events, 0);
    let after = rows(t.pool(), &table::<1>(&schema)).await;
    assert_eq!(after, fold(t.pool(), &schema).await);
    assert_eq!(&after[..live.len()], &live[..]);
    assert!(!runner.rebuild_named("nothing", 1).await.expect("rebuild"));
    runner.shutdown().await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_is_served_only_once_it_has_caught_up() {
    let t = TestStore::new("proj_bluegreen").await;
    let schema = t.store.schema().to_owned();
    let blue = PgProjectionRunner::builder(t.store.clone())
        .owner("blue")
        .view(Balances::<1>::new(&schema))
        .start()
        .await
        .expect("start v1");
    let mut last = Position::START;
    for s in 0..4 {
        last = last.max(add_many(&t.store, &format!("b-{s}"), 0, 100, 10, 2).await);
    }
    blue.wait_for_named("balances", last, WAIT)
        .await
        .expect("v1 caught up");

    // Version 2 is slow to build: 2 ms per event, 10 events per batch.
    let green = PgProjectionRunner::builder(t.store.clone())
        .owner("green")
        .tuning(PgRunnerTuning::default().batch_size(10))
        .view(Balances::<2>::new(&schema).with_delay(Duration::from_millis(2)))
        .start()
        .await
        .expect("start v2");

    // While it builds, readers get version 1, complete and live.
    let building = eventually(WAIT, || async {
        let status = green.status_of("balances").await.ok()?;
        let v2 = status.iter().find(|s| s.version == 2)?.clone();
        (v2.state == PgProjectionState::Rebuilding && v2.position > Position::START).then_some(v2)
    })
    .await
    .expect("version 2 is building");
    assert!(!building.active);
    let late = add_many(&t.store, "b-late", 0, 5, 5, 7).await;
    green
        .wait_for_named("balances", late, WAIT)
        .await
        .expect("the served version is live");
    let status = green.status_of("balances").await.expect("status");
    let v1 = status.iter().find(|s| s.version == 1).expect("v1");
    let v2 = status.iter().find(|s| s.version == 2).expect("v2");
    assert!(v1.active, "{status:?}");
    assert!(!v2.active);
    assert!(v2.position < late, "version 2 is still behind: {status:?}");
    let served = rows(t.pool(), &served_view(&schema)).await;
    assert_eq!(served, fold(t.pool(), &schema).await);
    assert_ne!(rows(t.pool(), &table::<2>(&schema)).await, served);

    // Once caught up, version 2 is served, and is exact.
    eventually(WAIT, || async {
        let status = green.status_of("balances").await.ok()?;
        status
            .iter()
            .any(|s| s.version == 2 && s.active && s.state == PgProjectionState::CaughtUp)
            .then_some(())
    })
    .await
    .expect("version 2 takes over");
    let status = green.status_of("balances").await.expect("status");
    assert!(!status.iter().find(|s| s.version == 1).expect("v1").active);
    let more = add_many(&t.store, "b-later", 0, 3, 3, 1).await;
    green
        .wait_for_named("balances", more, WAIT)
        .await
        .expect("v2 is live");
    let served = rows(t.pool(), &served_view(&schema)).await;
    assert_eq!(served, fold(t.pool(), &schema).await);
    assert_eq!(served, rows(t.pool(), &table::<2>(&schema)).await);

    // The old version can be forgotten; the served one cannot.
    blue.shutdown().await;
    assert!(!green.retire::<Balances<2>>(2).await.expect("retire"));
    assert!(green.retire::<Balances<2>>(1).await.expect("retire"));
    let status = green.status_of("balances").await.expect("status");
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].version, 2);
    green.shutdown().await;
    t.cleanup().await;
}
