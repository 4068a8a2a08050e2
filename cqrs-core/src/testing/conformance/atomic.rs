//! Atomic appends to several streams: all or nothing, in one commit, contiguous in the
//! log, the unit's command id making it safe to send again.

use std::sync::Arc;

use uuid::Uuid;

use super::Verdict;
use super::helpers::{Expect, TYPE, append, event, events, everything, request, versions};
use crate::store::{AppendRequest, AtomicAppendRequest};
use crate::{Error, EventStore};

fn unit(appends: Vec<AppendRequest>) -> AtomicAppendRequest {
    AtomicAppendRequest::new(appends)
}

pub(super) async fn atomic_append_writes_every_stream_in_one_commit(
    store: Arc<dyn EventStore>,
) -> Verdict {
    append(&*store, "old", 0, events(2)).await?;
    let outcomes = store
        .append_atomic(unit(vec![
            request("old", 2, vec![event("Numbered", 3)]),
            request("new", 0, events(2)),
            request("third", 0, vec![event("Numbered", 9)]),
        ]))
        .await
        .expect_ok("append_atomic")?;
    let shape: Vec<(u64, u64, bool)> = outcomes
        .iter()
        .map(|o| (o.first_version, o.stream_version, o.duplicate))
        .collect();
    ensure_eq!(
        shape,
        [(3, 3, false), (1, 2, false), (1, 1, false)],
        "(first version, stream version, duplicate) per stream, in the request's order"
    );
    append(&*store, "after", 0, events(1)).await?;
    let log = everything(&*store).await?;
    let unit_events: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, e)| e.stream_id != "after" && !(e.stream_id == "old" && e.stream_version < 3))
        .map(|(i, _)| i)
        .collect();
    ensure_eq!(
        unit_events,
        [2, 3, 4, 5],
        "the unit's events, contiguous in the log"
    );
    let commits: Vec<u64> = unit_events
        .iter()
        .map(|&i| log[i].position.commit())
        .collect();
    ensure!(
        commits.windows(2).all(|w| w[0] == w[1]),
        "the unit's events share one commit: {commits:?}"
    );
    ensure_eq!(
        outcomes.iter().map(|o| o.position).max(),
        Some(log[5].position),
        "the last outcome's position is the unit's last event"
    );
    let streams: Vec<(&str, u64)> = unit_events
        .iter()
        .map(|&i| (log[i].stream_id.as_str(), log[i].stream_version))
        .collect();
    ensure_eq!(
        streams,
        [("old", 3), ("new", 1), ("new", 2), ("third", 1)],
        "in the request's order, each stream in version order"
    );
    Ok(())
}

pub(super) async fn atomic_append_with_one_stale_stream_writes_nothing(
    store: Arc<dyn EventStore>,
) -> Verdict {
    append(&*store, "a", 0, events(1)).await?;
    append(&*store, "b", 0, events(2)).await?;
    let before = everything(&*store).await?;
    let stale = store
        .append_atomic(unit(vec![
            request("a", 1, events(1)),
            request("b", 1, events(1)),
            request("c", 0, events(1)),
        ]))
        .await;
    match stale {
        Err(Error::Conflict {
            stream_id,
            expected,
            ..
        }) => ensure_eq!(
            (stream_id.as_str(), expected),
            ("b", 1),
            "the stale stream named"
        ),
        other => return Err(format!("expected a conflict on `b`, got {other:?}")),
    }
    let ahead = store
        .append_atomic(unit(vec![
            request("a", 1, events(1)),
            request("c", 2, events(1)),
        ]))
        .await;
    ensure!(
        matches!(&ahead, Err(Error::Conflict { stream_id, .. }) if stream_id == "c"),
        "an expected version ahead of a stream conflicts too: {ahead:?}"
    );
    ensure_eq!(
        everything(&*store).await?.len(),
        before.len(),
        "events in the log after refused units"
    );
    Ok(())
}

pub(super) async fn atomic_repeated_command_id_returns_the_original_outcomes(
    store: Arc<dyn EventStore>,
) -> Verdict {
    let command_id = Uuid::new_v4();
    let first = store
        .append_atomic(
            unit(vec![request("x", 0, events(1)), request("y", 0, events(2))])
                .with_command_id(command_id),
        )
        .await
        .expect_ok("append_atomic")?;
    // The same unit sent again: new event ids, same command id, same expected versions.
    let again = store
        .append_atomic(
            unit(vec![request("x", 0, events(1)), request("y", 0, events(2))])
                .with_command_id(command_id),
        )
        .await
        .expect_ok("append_atomic again")?;
    ensure_eq!(again.len(), 2, "outcomes of the repeated unit");
    for (original, repeated) in first.iter().zip(&again) {
        ensure!(
            repeated.duplicate,
            "a repeated unit is a duplicate: {repeated:?}"
        );
        ensure_eq!(
            (
                repeated.first_version,
                repeated.stream_version,
                repeated.position
            ),
            (
                original.first_version,
                original.stream_version,
                original.position
            ),
            "a repeated unit's outcome"
        );
    }
    ensure_eq!(everything(&*store).await?.len(), 3, "events in the log");
    Ok(())
}

pub(super) async fn atomic_command_id_of_another_append_is_refused(
    store: Arc<dyn EventStore>,
) -> Verdict {
    let taken = Uuid::new_v4();
    store
        .append(request("single", 0, events(1)).with_command_id(taken))
        .await
        .expect_ok("append")?;
    let refused = store
        .append_atomic(unit(vec![request("p", 0, events(1))]).with_command_id(taken))
        .await;
    ensure!(
        matches!(&refused, Err(Error::CommandIdInUse { stream_id, .. }) if stream_id == "single"),
        "a unit with an append's command id: {refused:?}"
    );
    let unit_id = Uuid::new_v4();
    store
        .append_atomic(
            unit(vec![request("m", 0, events(1)), request("n", 0, events(1))])
                .with_command_id(unit_id),
        )
        .await
        .expect_ok("append_atomic")?;
    let other_unit = store
        .append_atomic(unit(vec![request("n", 1, events(1))]).with_command_id(unit_id))
        .await;
    ensure!(
        matches!(&other_unit, Err(Error::CommandIdInUse { stream_id, .. }) if stream_id == "m"),
        "another unit with a unit's command id: {other_unit:?}"
    );
    let single = store
        .append(request("q", 0, events(1)).with_command_id(unit_id))
        .await;
    ensure!(
        matches!(&single, Err(Error::CommandIdInUse { stream_id, .. }) if stream_id == "m"),
        "an append with a unit's command id: {single:?}"
    );
    ensure_eq!(everything(&*store).await?.len(), 3, "events in the log");
    Ok(())
}

pub(super) async fn atomic_invalid_units_are_refused_and_write_nothing(
    store: Arc<dyn EventStore>,
) -> Verdict {
    append(&*store, "stored", 0, events(1)).await?;
    let stored_id = everything(&*store).await?[0].event_id;
    let repeated = event("Numbered", 1);
    let mut taken = event("Numbered", 2);
    taken.event_id = stored_id;
    let cases = [
        ("an empty unit", unit(Vec::new())),
        (
            "a stream twice",
            unit(vec![request("s", 0, events(1)), request("s", 1, events(1))]),
        ),
        (
            "an append with its own command id",
            unit(vec![
                request("s", 0, events(1)).with_command_id(Uuid::new_v4()),
            ]),
        ),
        (
            "an event id twice in the unit",
            unit(vec![
                request("s", 0, vec![repeated.clone()]),
                request("t", 0, vec![repeated]),
            ]),
        ),
        (
            "an event id already stored",
            unit(vec![
                request("s", 0, events(1)),
                request("t", 0, vec![taken]),
            ]),
        ),
        (
            "an append of no events",
            unit(vec![
                request("s", 0, events(1)),
                request("t", 0, Vec::new()),
            ]),
        ),
    ];
    for (what, request) in cases {
        match store.append_atomic(request).await {
            Err(Error::InvalidAppend { .. } | Error::DuplicateEventId { .. }) => {}
            other => return Err(format!("{what}: expected a refusal, got {other:?}")),
        }
    }
    ensure_eq!(everything(&*store).await?.len(), 1, "events in the log");
    Ok(())
}

pub(super) async fn racing_atomic_units_on_a_shared_stream_have_one_winner(
    store: Arc<dyn EventStore>,
) -> Verdict {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12_u64 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            store
                .append_atomic(unit(vec![
                    request(&format!("own-{i}"), 0, events(2)),
                    request("shared", 0, vec![event("Numbered", 100 + i)]),
                ]))
                .await
        });
    }
    let (mut won, mut conflicts) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| format!("task panicked: {e}"))? {
            Ok(_) => won += 1,
            Err(Error::Conflict { .. }) => conflicts += 1,
            Err(other) => return Err(format!("unexpected error: {other} ({other:?})")),
        }
    }
    ensure_eq!((won, conflicts), (1, 11), "(winners, conflicts)");
    let log = everything(&*store).await?;
    ensure_eq!(log.len(), 3, "only the winner's events: {log:?}");
    let shared = store.load(TYPE, "shared", 0).await.expect_ok("load")?;
    ensure_eq!(versions(&shared), [1], "the shared stream");
    Ok(())
}
