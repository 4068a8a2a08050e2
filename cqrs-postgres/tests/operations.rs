//! An operator's handle on a store, from a process that runs no projection: streams and
//! their paging, the event at a position, counts by type and version, and requests
//! (skip) carried out by the runner that owns the projection.

mod common;
mod projection_support;

use std::sync::Arc;
use std::time::Duration;

use common::{TestStore, eventually};
use cqrs_core::Position;
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgProjectionState, PgRunnerTuning};
use projection_support::{Balances, Faults, add};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_page_by_type_and_id_and_events_are_found_by_position() {
    let t = TestStore::new("ops_streams").await;
    let mut positions = Vec::new();
    for (stream, count) in [("a", 3_u64), ("b", 1), ("c", 2)] {
        for version in 0..count {
            positions.push(add(&t.store, stream, version, 1).await);
        }
    }
    let ops = t.store.operations();
    let first = ops.streams(Some("counter"), None, 2).await.expect("page 1");
    let ids: Vec<(&str, u64)> = first
        .iter()
        .map(|s| (s.stream_id.as_str(), s.version))
        .collect();
    assert_eq!(ids, [("a", 3), ("b", 1)]);
    let last = first.last().expect("a last stream");
    let second = ops
        .streams(
            Some("counter"),
            Some((&last.stream_type, &last.stream_id)),
            2,
        )
        .await
        .expect("page 2");
    assert_eq!(second.len(), 1);
    assert_eq!((second[0].stream_id.as_str(), second[0].version), ("c", 2));
    assert!(second[0].created_at <= second[0].updated_at);
    assert!(
        ops.streams(Some("nothing"), None, 10)
            .await
            .expect("empty")
            .is_empty()
    );

    let fourth = ops
        .event_at(positions[3])
        .await
        .expect("read")
        .expect("found");
    assert_eq!((fourth.stream_id.as_str(), fourth.stream_version), ("b", 1));
    assert!(ops.event_at(Position::START).await.expect("read").is_none());
    let counts = ops.event_counts().await.expect("counts");
    assert_eq!(counts.len(), 1);
    assert_eq!(
        (
            counts[0].event_type.as_str(),
            counts[0].schema_version,
            counts[0].count
        ),
        ("Added", 2, 6)
    );
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skip_asked_by_another_process_is_carried_out_by_the_owner() {
    let t = TestStore::new("ops_skip").await;
    let schema = t.store.schema().to_owned();
    let faults = Arc::new(Faults::default());
    faults.fail_always("poison", 1);
    let runner = PgProjectionRunner::builder(t.store.clone())
        .tuning(PgRunnerTuning::default().poll_interval(Duration::from_millis(50)))
        .retries(1, Duration::from_millis(10))
        .view(Balances::<1>::new(&schema).with_faults(Arc::clone(&faults)))
        .start()
        .await
        .expect("start");
    add(&t.store, "fine", 0, 1).await;
    let poison = add(&t.store, "poison", 0, 1).await;
    let after = add(&t.store, "fine", 1, 1).await;

    // The operator's own handle, on a pool of its own: no runner in this "process".
    let operator = PgEventStore::builder(common::pool(2, "operator").await)
        .schema(&schema)
        .build()
        .expect("store");
    let ops = operator.operations();
    let failed = eventually(Duration::from_secs(10), || async {
        let status = ops.projection("balances").await.ok()?;
        status
            .into_iter()
            .find(|s| s.state == PgProjectionState::Failed)
    })
    .await
    .expect("the projection fails on the poison event");
    assert_eq!(failed.failed_at, Some(poison));
    assert!(failed.error.is_some());
    let event = ops
        .event_at(poison)
        .await
        .expect("read")
        .expect("the failing event");
    assert_eq!(event.stream_id, "poison");

    assert_eq!(ops.skip("balances", 1).await.expect("skip"), Some(poison));
    runner
        .wait_for_named("balances", after, Duration::from_secs(10))
        .await
        .expect("the owner went on past the skipped event");
    assert_eq!(
        ops.skip("balances", 1).await.expect("skip"),
        None,
        "nothing to skip any more"
    );
    assert!(!ops.retry("balances", 1).await.expect("retry"));
    assert!(!ops.retry("nothing", 1).await.expect("retry"));
    runner.shutdown().await;
    operator.pool().close().await;
    t.cleanup().await;
}
