//! A failing handler: retried with backoff (up to its ceiling), then the projection stops
//! at the event with its error recorded; the others keep running; `retry` and `skip`
//! resume it.

mod common;
mod projection_support;

use std::sync::Arc;
use std::time::Duration;

use common::{TestStore, eventually};
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{EventEnvelope, EventStore};
use cqrs_postgres::{PgDocumentView, PgProjectionRunner, PgProjectionState, PgRunnerTuning};
use projection_support::{Balances, Faults, add, add_many, caught_up, fold, rows, served_view};
use serde::{Deserialize, Serialize};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// Counts events per stream: a second projection beside the failing one.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Seen {
    events: u64,
}

impl cqrs_core::Document for Seen {
    const NAME: &'static str = "seen";
    type Event = common::counter::Added;
    fn apply(&mut self, _: &EventEnvelope<common::counter::Added>) {
        self.events += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_and_applied_once() {
    let t = TestStore::new("proj_retry").await;
    let schema = t.store.schema().to_owned();
    let faults = Arc::new(Faults::default());
    // Fails once in the middle of a batch, and once more with a panic.
    faults.fail_once("r-1", 6);
    faults.panic_once("r-1", 13);
    let runner = PgProjectionRunner::builder(t.store.clone())
        .tuning(PgRunnerTuning::default().batch_size(10))
        .retries(3, Duration::from_millis(20))
        .view(Balances::<1>::new(&schema).with_faults(Arc::clone(&faults)))
        .start()
        .await
        .expect("start");
    let mut last = add_many(&t.store, "r-1", 0, 4, 4, 5).await;
    // Events it does not want sit between the ones it does.
    for chunk in 0..4_u64 {
        t.store
            .append(AppendRequest::new(
                "other",
                format!("o-{chunk}"),
                0,
                vec![NewEvent::new("Unrelated", 1, json!({}))],
            ))
            .await
            .expect("append");
        last = add_many(&t.store, "r-1", 4 + chunk * 4, 4, 2, 5).await;
    }
    caught_up(&runner, "balances", last, WAIT).await;
    assert_eq!(
        rows(t.pool(), &served_view(&schema)).await,
        fold(t.pool(), &schema).await
    );
    runner.shutdown().await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_pause_no_longer_than_their_ceiling_so_a_healed_view_goes_on_at_once() {
    let t = TestStore::new("proj_ceiling").await;
    let schema = t.store.schema().to_owned();
    let faults = Arc::new(Faults::default());
    faults.fail_always("c-1", 1);
    let runner = PgProjectionRunner::builder(t.store.clone())
        .retries(u32::MAX, Duration::from_millis(10))
        .retry_ceiling(Duration::from_millis(50))
        .view(Balances::<1>::new(&schema).with_faults(Arc::clone(&faults)))
        .start()
        .await
        .expect("start");
    let last = add(&t.store, "c-1", 0, 5).await;
    // Three seconds of failures: doubling from 10 ms without a ceiling, the next try
    // would come about two seconds after the heal (at 5.1 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    faults.heal("c-1", 1);
    let healed = std::time::Instant::now();
    caught_up(&runner, "balances", last, WAIT).await;
    let after = healed.elapsed();
    assert!(
        after < Duration::from_secs(1),
        "caught up {after:?} after the heal: retries waited past their 50 ms ceiling"
    );
    runner.shutdown().await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_failure_stops_only_that_projection_until_skipped_or_retried() {
    let t = TestStore::new("proj_fail").await;
    let schema = t.store.schema().to_owned();
    let faults = Arc::new(Faults::default());
    faults.fail_always("f-1", 4);
    faults.fail_always("f-1", 9);
    let runner = PgProjectionRunner::builder(t.store.clone())
        .tuning(PgRunnerTuning::default().batch_size(50))
        .retries(3, Duration::from_millis(10))
        .view(Balances::<1>::new(&schema).with_faults(Arc::clone(&faults)))
        .view(PgDocumentView::<Seen>::new(&t.store).expect("name"))
        .start()
        .await
        .expect("start");
    let last = add_many(&t.store, "f-1", 0, 12, 12, 1).await;

    // The other projection is not held up.
    runner
        .wait_for_named("seen", last, WAIT)
        .await
        .expect("seen catches up");

    let status = eventually(WAIT, || async {
        let status = runner.status_of("balances").await.expect("status");
        (status[0].state == PgProjectionState::Failed).then(|| status[0].clone())
    })
    .await
    .expect("the projection stops");
    let failed_at = status.failed_at.expect("the failing event is recorded");
    let error = status.error.expect("the error is recorded");
    assert!(error.contains("injected failure at f-1/4"), "{error}");
    // Events before the failing one were applied (and committed), none after.
    assert_eq!(
        rows(t.pool(), &served_view(&schema)).await,
        vec![("f-1".to_owned(), 3, 3)]
    );
    assert!(status.position < failed_at);
    assert!(status.lag_events >= 9);
    assert!(status.lag > Duration::ZERO);

    // Still failing: a retry stops at the same event again.
    assert!(runner.retry::<Balances>().await.expect("retry"));
    let again = eventually(WAIT, || async {
        let status = runner.status_of("balances").await.expect("status");
        (status[0].state == PgProjectionState::Failed).then(|| status[0].clone())
    })
    .await
    .expect("fails again");
    assert_eq!(again.failed_at, Some(failed_at));

    // Skip it: the projection goes on and stops at the next bad event.
    assert_eq!(
        runner.skip::<Balances>().await.expect("skip"),
        Some(failed_at)
    );
    let next = eventually(WAIT, || async {
        let status = runner.status_of("balances").await.expect("status");
        (status[0].state == PgProjectionState::Failed && status[0].failed_at != Some(failed_at))
            .then(|| status[0].clone())
    })
    .await
    .expect("stops at the next bad event");
    assert!(next.error.expect("error").contains("f-1/9"));
    assert_eq!(
        rows(t.pool(), &served_view(&schema)).await,
        vec![("f-1".to_owned(), 7, 7)]
    );

    // Fixed in the meantime: retry applies it and catches up.
    faults.heal("f-1", 9);
    assert!(runner.retry::<Balances>().await.expect("retry"));
    runner
        .wait_for_named("balances", last, WAIT)
        .await
        .expect("caught up");
    // Everything but the skipped event.
    assert_eq!(
        rows(t.pool(), &served_view(&schema)).await,
        vec![("f-1".to_owned(), 11, 11)]
    );
    let status = runner.status_of("balances").await.expect("status");
    assert_eq!(status[0].state, PgProjectionState::CaughtUp);
    assert_eq!(status[0].error, None);
    assert_eq!(status[0].failed_at, None);

    // Nothing to retry or skip now.
    assert!(!runner.retry::<Balances>().await.expect("retry"));
    assert_eq!(runner.skip::<Balances>().await.expect("skip"), None);
    let late = add(&t.store, "f-1", 12, 1).await;
    runner
        .wait_for_named("balances", late, WAIT)
        .await
        .expect("live again");
    runner.shutdown().await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_does_not_decode_stops_the_projection_there() {
    let t = TestStore::new("proj_undecodable").await;
    let schema = t.store.schema().to_owned();
    let runner = PgProjectionRunner::builder(t.store.clone())
        .retries(1, Duration::from_millis(10))
        .view(Balances::<1>::new(&schema))
        .start()
        .await
        .expect("start");
    add_many(&t.store, "u-1", 0, 3, 3, 2).await;
    // Version 4 has a payload the event type cannot read; version 5 is fine.
    t.store
        .append(AppendRequest::new(
            "counter",
            "u-1",
            3,
            vec![NewEvent::new("Added", 2, json!({ "amount": "lots" }))],
        ))
        .await
        .expect("append the bad event");
    let last = add(&t.store, "u-1", 4, 2).await;

    let status = eventually(WAIT, || async {
        let status = runner.status_of("balances").await.expect("status");
        (status[0].state == PgProjectionState::Failed).then(|| status[0].clone())
    })
    .await
    .expect("the projection stops at the bad event");
    let error = status.error.expect("the error is recorded");
    assert!(
        error.contains("counter/u-1") && error.contains("version 4") && error.contains("Added"),
        "{error}"
    );
    assert_eq!(
        rows(t.pool(), &served_view(&schema)).await,
        vec![("u-1".to_owned(), 6, 3)]
    );

    // Skipped, the projection goes on with the events after it.
    assert!(runner.skip::<Balances>().await.expect("skip").is_some());
    runner
        .wait_for_named("balances", last, WAIT)
        .await
        .expect("caught up");
    assert_eq!(
        rows(t.pool(), &served_view(&schema)).await,
        vec![("u-1".to_owned(), 8, 4)]
    );
    runner.shutdown().await;
    t.cleanup().await;
}
