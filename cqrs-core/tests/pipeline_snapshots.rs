//! Snapshots never change the outcome: state from any snapshot plus the tail equals the
//! state from a full replay, at every version.

mod common;

use std::time::Duration;

use common::{Ledger, LedgerCommand, LedgerEvent, fold, runtime};
use cqrs_core::memory::MemoryEventStore;
use cqrs_core::store::{AppendRequest, NewEvent, Snapshot};
use cqrs_core::{Aggregate, Cqrs, EventStore, Metadata, SnapshotPolicy};
use proptest::prelude::*;

fn command() -> impl Strategy<Value = LedgerCommand> {
    prop_oneof![
        (-50_i64..50, "[a-z]{0,3}").prop_map(|(amount, tag)| LedgerCommand::Add { amount, tag }),
        (-4_i64..=4).prop_map(|factor| LedgerCommand::Multiply { factor }),
        (-20_i64..20, -3_i64..=3)
            .prop_map(|(amount, factor)| LedgerCommand::AddThenMultiply { amount, factor }),
        (-9_i64..9).prop_map(|amount| LedgerCommand::AddIfEven { amount }),
        Just(LedgerCommand::Noop),
    ]
}

/// Stores `events` as one stream of a fresh store, with a snapshot of the state at
/// `snapshot_at` (folded from the first `snapshot_at` events).
async fn store_with_snapshot(events: &[LedgerEvent], snapshot_at: usize) -> MemoryEventStore {
    let store = MemoryEventStore::new();
    if !events.is_empty() {
        let new = events
            .iter()
            .map(|e| NewEvent::from_event(e, Metadata::default()).expect("encode"))
            .collect();
        store
            .append(AppendRequest::new(Ledger::TYPE, "l", 0, new))
            .await
            .expect("append");
    }
    if snapshot_at > 0 {
        let state = fold(&events[..snapshot_at]);
        store
            .save_snapshot(Snapshot {
                stream_type: Ledger::TYPE.to_owned(),
                stream_id: "l".to_owned(),
                stream_version: snapshot_at as u64,
                state_version: Ledger::STATE_VERSION,
                state: serde_json::to_value(&state).expect("state serialises"),
            })
            .await
            .expect("save snapshot");
    }
    store
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn snapshot_plus_tail_equals_full_replay_at_every_version(
        commands in prop::collection::vec(command(), 1..24),
    ) {
        runtime().block_on(async {
            // Run the commands through the pipeline to get a realistic event history.
            let source = MemoryEventStore::new();
            let cqrs = Cqrs::<Ledger, _>::new(source.clone());
            for command in commands {
                let _ = cqrs.execute("l", command).await;
            }
            let events: Vec<LedgerEvent> = source
                .load(Ledger::TYPE, "l", 0)
                .await
                .expect("load")
                .iter()
                .map(|raw| raw.decode::<LedgerEvent>().expect("decode").payload)
                .collect();

            for version in 0..=events.len() {
                let expected = fold(&events[..version]);
                for snapshot_at in 0..=version {
                    let store = store_with_snapshot(&events[..version], snapshot_at).await;
                    let loaded = Cqrs::<Ledger, _>::new(store).load("l").await.expect("load");
                    assert_eq!(loaded.version, version as u64);
                    assert_eq!(
                        loaded.state, expected,
                        "snapshot at {snapshot_at}, stream at {version}"
                    );
                }
            }
        });
    }

    #[test]
    fn snapshots_written_by_the_pipeline_match_the_replay(
        commands in prop::collection::vec(command(), 1..40),
        every in 1_u64..6,
    ) {
        runtime().block_on(async {
            let store = MemoryEventStore::new();
            let cqrs = Cqrs::<Ledger, _>::builder(store.clone())
                .snapshots(SnapshotPolicy::every(every))
                .build();
            let mut expected_version = 0;
            for command in commands {
                if let Ok(outcome) = cqrs.execute("l", command).await {
                    expected_version = outcome.stream_version;
                }
                // Every snapshot the pipeline wrote is exactly the fold of the events up
                // to its version: no event applied twice or missed.
                if let Some(snapshot) = store.load_snapshot(Ledger::TYPE, "l").await.expect("snapshot") {
                    let events: Vec<LedgerEvent> = store
                        .load(Ledger::TYPE, "l", 0)
                        .await
                        .expect("load")
                        .iter()
                        .take(usize::try_from(snapshot.stream_version).expect("fits"))
                        .map(|raw| raw.decode::<LedgerEvent>().expect("decode").payload)
                        .collect();
                    let state: Ledger = serde_json::from_value(snapshot.state).expect("state");
                    assert_eq!(state, fold(&events), "snapshot at {}", snapshot.stream_version);
                }
                let loaded = cqrs.load("l").await.expect("load");
                assert_eq!(loaded.version, expected_version);
            }
        });
    }
}

#[tokio::test]
async fn the_pipeline_snapshots_when_due_and_loads_from_the_snapshot() {
    let store = MemoryEventStore::new();
    let cqrs = Cqrs::<Ledger, _>::builder(store.clone())
        .snapshots(SnapshotPolicy::every(5))
        .build();
    for i in 0..12 {
        cqrs.execute(
            "l",
            LedgerCommand::Add {
                amount: i,
                tag: String::new(),
            },
        )
        .await
        .expect("execute");
    }
    // Snapshot writes run in the background; give them a moment.
    let mut snapshot = None;
    for _ in 0..200 {
        snapshot = store
            .load_snapshot(Ledger::TYPE, "l")
            .await
            .expect("snapshot");
        if snapshot.as_ref().is_some_and(|s| s.stream_version == 10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let snapshot = snapshot.expect("a snapshot was written");
    assert_eq!(snapshot.stream_version, 10);
    let loaded = store
        .load_for_command(Ledger::TYPE, "l", Ledger::STATE_VERSION)
        .await
        .expect("load");
    assert_eq!(
        loaded.events.len(),
        2,
        "only the tail after the snapshot is read"
    );
    assert_eq!(
        cqrs.load("l").await.expect("load").state.total,
        (0..12).sum::<i64>()
    );
}

#[tokio::test]
async fn a_snapshot_of_another_state_version_or_shape_is_ignored() {
    let events = [
        LedgerEvent::Added {
            amount: 3,
            tag: "a".to_owned(),
        },
        LedgerEvent::Multiplied { factor: 2 },
    ];
    let store = store_with_snapshot(&events, 0).await;
    // A snapshot of a different state version, claiming a wrong state.
    store
        .save_snapshot(Snapshot {
            stream_type: Ledger::TYPE.to_owned(),
            stream_id: "l".to_owned(),
            stream_version: 2,
            state_version: Ledger::STATE_VERSION + 1,
            state: serde_json::json!({ "total": 999, "events": 2, "digest": 0, "tags": [] }),
        })
        .await
        .expect("save");
    let cqrs = Cqrs::<Ledger, _>::new(store.clone());
    assert_eq!(cqrs.load("l").await.expect("load").state, fold(&events));

    // A snapshot of the right state version whose state no longer deserialises.
    let store = store_with_snapshot(&events, 0).await;
    store
        .save_snapshot(Snapshot {
            stream_type: Ledger::TYPE.to_owned(),
            stream_id: "l".to_owned(),
            stream_version: 2,
            state_version: Ledger::STATE_VERSION,
            state: serde_json::json!({ "unexpected": "shape" }),
        })
        .await
        .expect("save");
    let cqrs = Cqrs::<Ledger, _>::new(store);
    assert_eq!(cqrs.load("l").await.expect("load").state, fold(&events));
}
