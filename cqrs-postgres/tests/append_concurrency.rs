//! Concurrent writers: the unique (stream, version) key is the single writer.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use common::TestStore;
use common::counter::{Add, Counter};
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{Cqrs, CqrsTuning, Error, EventStore, RetryPolicy};
use serde_json::json;
use tokio::sync::Barrier;
use uuid::Uuid;

fn event(n: u64) -> NewEvent {
    NewEvent::new("Numbered", 1, json!({ "n": n }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_tasks_on_four_streams_keep_versions_contiguous() {
    const TASKS: u64 = 16;
    const PER_TASK: u64 = 20;
    let t = TestStore::with_pool_size("conc", 16).await;
    let store = Arc::new(t.store.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let stream = format!("s{}", task % 4);
            let mut written = Vec::new();
            let mut conflicts = 0_u32;
            while (written.len() as u64) < PER_TASK {
                let version = store.load("conc", &stream, 0).await.expect("load").len() as u64;
                let new = event(task);
                let id = new.event_id;
                match store
                    .append(AppendRequest::new("conc", &stream, version, vec![new]))
                    .await
                {
                    Ok(outcome) => {
                        assert_eq!(outcome.stream_version, version + 1);
                        written.push(id);
                    }
                    Err(Error::Conflict { expected, .. }) => {
                        assert_eq!(expected, version);
                        conflicts += 1;
                    }
                    Err(other) => panic!("append failed: {other:?}"),
                }
            }
            (written, conflicts)
        });
    }
    let mut written = HashSet::new();
    let mut conflicts = 0;
    while let Some(joined) = tasks.join_next().await {
        let (ids, c) = joined.expect("task panicked");
        written.extend(ids);
        conflicts += c;
    }
    assert_eq!(
        written.len() as u64,
        TASKS * PER_TASK,
        "an event id repeated"
    );
    let mut stored = HashSet::new();
    for s in 0..4 {
        let events = store.load("conc", &format!("s{s}"), 0).await.expect("load");
        assert_eq!(
            events.len() as u64,
            TASKS / 4 * PER_TASK,
            "stream s{s}: lost update"
        );
        for (i, e) in events.iter().enumerate() {
            assert_eq!(
                e.stream_version,
                i as u64 + 1,
                "stream s{s}: versions not contiguous"
            );
            assert!(stored.insert(e.event_id), "event stored twice");
        }
    }
    assert_eq!(
        stored, written,
        "stored events differ from acknowledged ones"
    );
    println!("{conflicts} conflicts retried");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_racing_on_one_aggregate_get_exactly_one_conflict() {
    let t = TestStore::with_pool_size("race", 4).await;
    let store = Arc::new(t.store.clone());
    for round in 0..50_u64 {
        let stream = format!("race-{round}");
        let expected = round % 3;
        if expected > 0 {
            let seed = (0..expected).map(event).collect();
            store
                .append(AppendRequest::new("race", &stream, 0, seed))
                .await
                .expect("seed the stream");
        }
        let barrier = Arc::new(Barrier::new(2));
        let mut racers = tokio::task::JoinSet::new();
        for racer in 0..2 {
            let (store, barrier, stream) =
                (Arc::clone(&store), Arc::clone(&barrier), stream.clone());
            racers.spawn(async move {
                barrier.wait().await;
                store
                    .append(AppendRequest::new(
                        "race",
                        &stream,
                        expected,
                        vec![event(racer)],
                    ))
                    .await
            });
        }
        let mut wins = 0;
        let mut conflicts = 0;
        while let Some(joined) = racers.join_next().await {
            match joined.expect("racer panicked") {
                Ok(outcome) => {
                    assert_eq!(outcome.stream_version, expected + 1);
                    wins += 1;
                }
                Err(Error::Conflict {
                    stream_type,
                    stream_id,
                    expected: e,
                }) => {
                    assert_eq!(
                        (stream_type.as_str(), stream_id.as_str(), e),
                        ("race", stream.as_str(), expected)
                    );
                    conflicts += 1;
                }
                Err(other) => panic!("unexpected error: {other:?}"),
            }
        }
        assert_eq!((wins, conflicts), (1, 1), "round {round}");
        let stored = store.load("race", &stream, 0).await.expect("load");
        assert_eq!(
            stored.len() as u64,
            expected + 1,
            "round {round}: the loser wrote"
        );
    }
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_racing_with_one_command_id_on_one_stream_write_once() {
    let t = TestStore::with_pool_size("idem", 8).await;
    let store = Arc::new(t.store.clone());
    for round in 0..20 {
        let command_id = Uuid::new_v4();
        let stream = format!("idem-{round}");
        let barrier = Arc::new(Barrier::new(6));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..6 {
            let (store, barrier, stream) =
                (Arc::clone(&store), Arc::clone(&barrier), stream.clone());
            tasks.spawn(async move {
                barrier.wait().await;
                store
                    .append(
                        AppendRequest::new("idem", &stream, 0, vec![event(i), event(i)])
                            .with_command_id(command_id),
                    )
                    .await
            });
        }
        let mut outcomes = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            outcomes.push(joined.expect("task panicked").expect("append or duplicate"));
        }
        assert_eq!(
            outcomes.iter().filter(|o| !o.duplicate).count(),
            1,
            "round {round}"
        );
        let positions: HashSet<_> = outcomes.iter().map(|o| o.position).collect();
        assert_eq!(positions.len(), 1, "every caller sees the original outcome");
        assert_eq!(store.load("idem", &stream, 0).await.expect("load").len(), 2);
        assert_eq!(
            store
                .find_command(command_id, "idem", &stream)
                .await
                .expect("find")
                .map(|o| o.position),
            positions.into_iter().next()
        );
    }
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_command_pipeline_loses_no_update_under_contention() {
    let t = TestStore::with_pool_size("pipe", 8).await;
    let cqrs = Arc::new(
        // Without the cache, which would queue the commands of one aggregate in this
        // process instead of letting them race on the log's key.
        Cqrs::<Counter, _>::builder(t.store.clone())
            .retry(RetryPolicy::new(200))
            .tuning(CqrsTuning::default().cache(0))
            .build(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8_u64 {
        let cqrs = Arc::clone(&cqrs);
        tasks.spawn(async move {
            for _ in 0..25 {
                cqrs.execute(&format!("c{}", task % 2), Add(1))
                    .await
                    .expect("command");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task panicked");
    }
    let mut totals = BTreeMap::new();
    for id in ["c0", "c1"] {
        let loaded = cqrs.load(id).await.expect("load");
        totals.insert(id, (loaded.state.total, loaded.version));
    }
    assert_eq!(totals[&"c0"], (100, 100));
    assert_eq!(totals[&"c1"], (100, 100));
    t.cleanup().await;
}
