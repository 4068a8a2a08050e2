//! The contract's tests: snapshots and loads for a command.

use std::sync::Arc;

use serde_json::{Value, json};

use super::Verdict;
use super::helpers::{Expect, TYPE, append, events, replayed_versions, snapshot};
use crate::store::Snapshot;
use crate::{Error, EventStore};

pub(super) async fn snapshot_of_unknown_stream_is_none(store: Arc<dyn EventStore>) -> Verdict {
    let found = store
        .load_snapshot(TYPE, "s")
        .await
        .expect_ok("load_snapshot")?;
    ensure!(found.is_none(), "found {found:?}");
    Ok(())
}

pub(super) async fn snapshot_round_trips(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "s", 0, events(3)).await?;
    let saved = Snapshot {
        state: json!({ "balance": 17, "owner": "ünï \"q\"", "tags": ["a", "b"] }),
        ..snapshot("s", 3, 2)
    };
    store
        .save_snapshot(saved.clone())
        .await
        .expect_ok("save_snapshot")?;
    let loaded = store
        .load_snapshot(TYPE, "s")
        .await
        .expect_ok("load_snapshot")?;
    ensure_eq!(loaded, Some(saved), "loaded snapshot");
    Ok(())
}

pub(super) async fn newer_snapshot_replaces_older(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "s", 0, events(6)).await?;
    store
        .save_snapshot(snapshot("s", 2, 1))
        .await
        .expect_ok("save")?;
    store
        .save_snapshot(snapshot("s", 5, 1))
        .await
        .expect_ok("save")?;
    let loaded = store
        .load_snapshot(TYPE, "s")
        .await
        .expect_ok("load_snapshot")?;
    ensure_eq!(
        loaded.map(|s| s.stream_version),
        Some(5),
        "snapshot version"
    );
    Ok(())
}

pub(super) async fn older_snapshot_never_replaces_newer(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "s", 0, events(6)).await?;
    store
        .save_snapshot(snapshot("s", 5, 1))
        .await
        .expect_ok("save")?;
    store
        .save_snapshot(snapshot("s", 2, 1))
        .await
        .expect_ok("save")?;
    let loaded = store
        .load_snapshot(TYPE, "s")
        .await
        .expect_ok("load_snapshot")?;
    ensure_eq!(
        loaded.map(|s| s.stream_version),
        Some(5),
        "snapshot version"
    );
    Ok(())
}

pub(super) async fn snapshot_ahead_of_its_stream_is_refused(store: Arc<dyn EventStore>) -> Verdict {
    for (stored, version) in [(0, 1), (3, 4), (3, 0)] {
        let stream_id = format!("s{stored}-{version}");
        if stored > 0 {
            append(&*store, &stream_id, 0, events(stored)).await?;
        }
        let refused = store.save_snapshot(snapshot(&stream_id, version, 1)).await;
        ensure!(
            matches!(refused, Err(Error::InvalidSnapshot { .. })),
            "a snapshot at version {version} of a stream at {stored}: expected \
             Error::InvalidSnapshot, got {refused:?}"
        );
        let found = store
            .load_snapshot(TYPE, &stream_id)
            .await
            .expect_ok("load_snapshot")?;
        ensure!(
            found.is_none(),
            "the refused snapshot was stored: {found:?}"
        );
    }
    Ok(())
}

pub(super) async fn load_for_command_returns_snapshot_and_tail(
    store: Arc<dyn EventStore>,
) -> Verdict {
    append(&*store, "s", 0, events(5)).await?;
    store
        .save_snapshot(snapshot("s", 3, 1))
        .await
        .expect_ok("save")?;
    let loaded = store
        .load_for_command(TYPE, "s", 1)
        .await
        .expect_ok("load_for_command")?;
    ensure_eq!(
        loaded.snapshot.as_ref().map(|s| s.stream_version),
        Some(3),
        "snapshot version"
    );
    ensure_eq!(
        replayed_versions(&loaded.events),
        vec![4, 5],
        "tail versions"
    );
    Ok(())
}

pub(super) async fn load_for_command_ignores_other_state_versions(
    store: Arc<dyn EventStore>,
) -> Verdict {
    append(&*store, "s", 0, events(4)).await?;
    store
        .save_snapshot(snapshot("s", 3, 1))
        .await
        .expect_ok("save")?;
    let loaded = store
        .load_for_command(TYPE, "s", 2)
        .await
        .expect_ok("load_for_command")?;
    ensure!(
        loaded.snapshot.is_none(),
        "a snapshot of state version 1 was used for 2"
    );
    ensure_eq!(
        replayed_versions(&loaded.events),
        vec![1, 2, 3, 4],
        "versions replayed"
    );
    Ok(())
}

pub(super) async fn load_for_command_without_snapshot_returns_whole_stream(
    store: Arc<dyn EventStore>,
) -> Verdict {
    append(&*store, "s", 0, events(3)).await?;
    let loaded = store
        .load_for_command(TYPE, "s", 1)
        .await
        .expect_ok("load_for_command")?;
    ensure!(
        loaded.snapshot.is_none(),
        "found a snapshot that was never saved"
    );
    ensure_eq!(replayed_versions(&loaded.events), vec![1, 2, 3], "versions");
    // Payloads are JSON text, whose spacing is the backend's: compare them as JSON.
    let replayed = loaded
        .events
        .iter()
        .map(|e| {
            let payload = serde_json::from_str::<Value>(&e.payload).unwrap_or(Value::Null);
            (e.event_type.clone(), e.schema_version, payload)
        })
        .collect::<Vec<_>>();
    let stored = store
        .load(TYPE, "s", 0)
        .await
        .expect_ok("load")?
        .into_iter()
        .map(|e| (e.event_type, e.schema_version, e.payload))
        .collect::<Vec<_>>();
    ensure_eq!(
        replayed,
        stored,
        "types, schema versions and payloads as load returns them"
    );
    let missing = store
        .load_for_command(TYPE, "missing", 1)
        .await
        .expect_ok("load_for_command")?;
    ensure!(
        missing.snapshot.is_none() && missing.events.is_empty(),
        "a missing stream loaded something"
    );
    Ok(())
}
