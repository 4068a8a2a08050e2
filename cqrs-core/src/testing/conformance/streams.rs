//! The contract's tests: streams, appends, conflicts, validation and command ids.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use super::Verdict;
use super::helpers::{
    Expect, TYPE, append, event, events, everything, expect_conflict, numbers, request, versions,
};
use crate::store::{AppendRequest, MAX_STREAM_ID_LEN, MAX_STREAM_TYPE_LEN, NewEvent};
use crate::{Error, EventStore, Metadata};

pub(super) async fn loading_a_missing_stream_returns_no_events(
    store: Arc<dyn EventStore>,
) -> Verdict {
    let loaded = store.load(TYPE, "nobody", 0).await.expect_ok("load")?;
    ensure!(
        loaded.is_empty(),
        "a missing stream loaded {} events",
        loaded.len()
    );
    Ok(())
}

pub(super) async fn first_append_expects_version_zero(store: Arc<dyn EventStore>) -> Verdict {
    let outcome = append(&*store, "s", 0, events(1)).await?;
    ensure_eq!(
        outcome.stream_version,
        1,
        "stream version after the first append"
    );
    ensure!(!outcome.duplicate, "a first append reported duplicate");
    Ok(())
}

pub(super) async fn append_assigns_contiguous_versions(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "s", 0, events(3)).await?;
    append(&*store, "s", 3, events(2)).await?;
    let loaded = store.load(TYPE, "s", 0).await.expect_ok("load")?;
    ensure_eq!(versions(&loaded), vec![1, 2, 3, 4, 5], "versions");
    Ok(())
}

pub(super) async fn append_outcome_reports_versions_and_last_position(
    store: Arc<dyn EventStore>,
) -> Verdict {
    append(&*store, "s", 0, events(2)).await?;
    let outcome = append(&*store, "s", 2, events(3)).await?;
    ensure_eq!(outcome.first_version, 3, "first version");
    ensure_eq!(outcome.stream_version, 5, "last version");
    let loaded = store.load(TYPE, "s", 0).await.expect_ok("load")?;
    ensure_eq!(
        Some(outcome.position),
        loaded.last().map(|e| e.position),
        "outcome position vs last event's position"
    );
    Ok(())
}

pub(super) async fn load_returns_events_in_version_order(store: Arc<dyn EventStore>) -> Verdict {
    for i in 0..5 {
        append(&*store, "s", i, vec![event("Numbered", i + 1)]).await?;
    }
    let loaded = store.load(TYPE, "s", 0).await.expect_ok("load")?;
    ensure_eq!(
        numbers(&loaded),
        (1..=5).map(|n| json!(n)).collect::<Vec<_>>(),
        "payloads"
    );
    ensure_eq!(versions(&loaded), vec![1, 2, 3, 4, 5], "versions");
    Ok(())
}

pub(super) async fn load_after_a_version_returns_only_the_tail(
    store: Arc<dyn EventStore>,
) -> Verdict {
    append(&*store, "s", 0, events(6)).await?;
    let tail = store.load(TYPE, "s", 4).await.expect_ok("load")?;
    ensure_eq!(versions(&tail), vec![5, 6], "versions after 4");
    Ok(())
}

pub(super) async fn load_after_the_last_version_is_empty(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "s", 0, events(2)).await?;
    let tail = store.load(TYPE, "s", 2).await.expect_ok("load")?;
    ensure!(
        tail.is_empty(),
        "loading after the last version returned {:?}",
        versions(&tail)
    );
    let beyond = store.load(TYPE, "s", 10).await.expect_ok("load")?;
    ensure!(
        beyond.is_empty(),
        "loading beyond the stream returned {:?}",
        versions(&beyond)
    );
    Ok(())
}

pub(super) async fn stale_expected_version_conflicts(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "s", 0, events(2)).await?;
    expect_conflict(
        store.append(request("s", 1, events(1))).await,
        "expected 1 at version 2",
    )?;
    expect_conflict(
        store.append(request("s", 0, events(1))).await,
        "expected 0 at version 2",
    )
}

pub(super) async fn expected_version_ahead_of_the_stream_conflicts(
    store: Arc<dyn EventStore>,
) -> Verdict {
    append(&*store, "s", 0, events(2)).await?;
    expect_conflict(
        store.append(request("s", 5, events(1))).await,
        "expected 5 at version 2",
    )
}

pub(super) async fn new_stream_with_nonzero_expected_version_conflicts(
    store: Arc<dyn EventStore>,
) -> Verdict {
    expect_conflict(
        store.append(request("new", 1, events(1))).await,
        "expected 1 on a new stream",
    )
}

pub(super) async fn conflict_writes_nothing(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "s", 0, events(2)).await?;
    let before = everything(&*store).await?;
    let _ = store.append(request("s", 1, events(3))).await;
    let _ = store.append(request("s", 7, events(3))).await;
    let after = everything(&*store).await?;
    ensure_eq!(
        after.len(),
        before.len(),
        "events in the log after two conflicts"
    );
    ensure_eq!(
        store.load(TYPE, "s", 0).await.expect_ok("load")?.len(),
        2,
        "events in the stream"
    );
    Ok(())
}

pub(super) async fn conflict_names_the_stream_and_expected_version(
    store: Arc<dyn EventStore>,
) -> Verdict {
    append(&*store, "s", 0, events(1)).await?;
    match store.append(request("s", 0, events(1))).await {
        Err(Error::Conflict {
            stream_type,
            stream_id,
            expected,
        }) => {
            ensure_eq!(stream_type, TYPE, "stream type in the conflict");
            ensure_eq!(stream_id, "s", "stream id in the conflict");
            ensure_eq!(expected, 0, "expected version in the conflict");
            Ok(())
        }
        other => Err(format!("expected Error::Conflict, got {other:?}")),
    }
}

pub(super) async fn streams_are_isolated_by_id(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "a", 0, events(2)).await?;
    append(&*store, "b", 0, events(1)).await?;
    ensure_eq!(
        store.load(TYPE, "a", 0).await.expect_ok("load a")?.len(),
        2,
        "stream a"
    );
    ensure_eq!(
        store.load(TYPE, "b", 0).await.expect_ok("load b")?.len(),
        1,
        "stream b"
    );
    Ok(())
}

pub(super) async fn streams_are_isolated_by_type(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "same", 0, events(2)).await?;
    store
        .append(AppendRequest::new("other_type", "same", 0, events(1)))
        .await
        .expect_ok("append to other type")?;
    ensure_eq!(
        store.load(TYPE, "same", 0).await.expect_ok("load")?.len(),
        2,
        "first type"
    );
    let other = store
        .load("other_type", "same", 0)
        .await
        .expect_ok("load")?;
    ensure_eq!(versions(&other), vec![1], "other type's versions");
    ensure_eq!(other[0].stream_type, "other_type", "stored stream type");
    Ok(())
}

pub(super) async fn empty_append_is_rejected_and_writes_nothing(
    store: Arc<dyn EventStore>,
) -> Verdict {
    match store.append(request("s", 0, Vec::new())).await {
        Err(Error::InvalidAppend { .. }) => {}
        other => return Err(format!("expected Error::InvalidAppend, got {other:?}")),
    }
    ensure!(
        everything(&*store).await?.is_empty(),
        "an empty append wrote something"
    );
    Ok(())
}

pub(super) async fn empty_stream_id_is_rejected(store: Arc<dyn EventStore>) -> Verdict {
    match store.append(request("", 0, events(1))).await {
        Err(Error::InvalidAppend { .. }) => {}
        other => return Err(format!("expected Error::InvalidAppend, got {other:?}")),
    }
    ensure!(
        everything(&*store).await?.is_empty(),
        "an invalid append wrote something"
    );
    Ok(())
}

pub(super) async fn schema_version_zero_is_rejected_and_writes_nothing(
    store: Arc<dyn EventStore>,
) -> Verdict {
    let mut batch = events(2);
    batch[1].schema_version = 0;
    match store.append(request("s", 0, batch)).await {
        Err(Error::InvalidAppend { .. }) => {}
        other => return Err(format!("expected Error::InvalidAppend, got {other:?}")),
    }
    ensure!(
        everything(&*store).await?.is_empty(),
        "an invalid append wrote something"
    );
    Ok(())
}

pub(super) async fn stored_fields_round_trip(store: Arc<dyn EventStore>) -> Verdict {
    let mut headers = BTreeMap::new();
    headers.insert("user".to_owned(), "ada".to_owned());
    headers.insert("tenant".to_owned(), "t-1".to_owned());
    let metadata = Metadata {
        correlation_id: Some(Uuid::new_v4()),
        causation_id: Some(Uuid::new_v4()),
        command_id: Some(Uuid::new_v4()),
        headers,
    };
    let payload = json!({ "text": "ünïcødé \"quoted\" \\ back", "list": [1, 2.5, null], "nested": { "flag": true } });
    let new = NewEvent::new("Rich", 3, payload.clone()).with_metadata(metadata.clone());
    let event_id = new.event_id;
    append(&*store, "s", 0, vec![new]).await?;
    let loaded = store.load(TYPE, "s", 0).await.expect_ok("load")?;
    let stored = loaded.first().ok_or("the event is missing")?;
    ensure_eq!(stored.event_id, event_id, "event id");
    ensure_eq!(stored.stream_type, TYPE, "stream type");
    ensure_eq!(stored.stream_id, "s", "stream id");
    ensure_eq!(stored.stream_version, 1, "stream version");
    ensure_eq!(stored.event_type, "Rich", "event type");
    ensure_eq!(stored.schema_version, 3, "schema version");
    ensure_eq!(stored.payload, payload, "payload");
    ensure_eq!(stored.metadata, metadata, "metadata");
    let from_log = everything(&*store).await?;
    ensure_eq!(
        from_log.first(),
        Some(stored),
        "the same event read from the global log"
    );
    Ok(())
}

pub(super) async fn recorded_at_is_set_by_the_store(store: Arc<dyn EventStore>) -> Verdict {
    let before = chrono::Utc::now() - chrono::Duration::seconds(60);
    append(&*store, "s", 0, events(1)).await?;
    let after = chrono::Utc::now() + chrono::Duration::seconds(60);
    let loaded = store.load(TYPE, "s", 0).await.expect_ok("load")?;
    let at = loaded.first().ok_or("the event is missing")?.recorded_at;
    ensure!(
        before <= at && at <= after,
        "recorded_at {at} is not around now"
    );
    Ok(())
}

pub(super) async fn event_id_already_stored_is_rejected_and_writes_nothing(
    store: Arc<dyn EventStore>,
) -> Verdict {
    let first = event("Numbered", 1);
    let reused = first.event_id;
    append(&*store, "a", 0, vec![first]).await?;
    let mut again = event("Numbered", 2);
    again.event_id = reused;
    match store
        .append(request("b", 0, vec![event("Numbered", 3), again]))
        .await
    {
        Err(Error::DuplicateEventId { event_id }) => {
            ensure_eq!(event_id, reused, "the reported event id");
        }
        other => return Err(format!("expected Error::DuplicateEventId, got {other:?}")),
    }
    ensure_eq!(everything(&*store).await?.len(), 1, "events in the log");
    Ok(())
}

pub(super) async fn event_id_twice_in_one_append_is_rejected(
    store: Arc<dyn EventStore>,
) -> Verdict {
    let first = event("Numbered", 1);
    let mut second = event("Numbered", 2);
    second.event_id = first.event_id;
    match store.append(request("s", 0, vec![first, second])).await {
        Err(Error::DuplicateEventId { .. }) => {}
        other => return Err(format!("expected Error::DuplicateEventId, got {other:?}")),
    }
    ensure!(
        everything(&*store).await?.is_empty(),
        "a rejected append wrote something"
    );
    Ok(())
}

pub(super) async fn repeated_command_id_returns_original_outcome_and_writes_nothing(
    store: Arc<dyn EventStore>,
) -> Verdict {
    let command_id = Uuid::new_v4();
    let original = store
        .append(request("s", 0, events(2)).with_command_id(command_id))
        .await
        .expect_ok("first append")?;
    append(&*store, "s", 2, events(1)).await?;
    // Same command id, now with an outdated expected version: still the original outcome.
    let repeat = store
        .append(request("s", 0, events(2)).with_command_id(command_id))
        .await
        .expect_ok("repeated append")?;
    ensure!(
        repeat.duplicate,
        "the repeat was not flagged as a duplicate"
    );
    ensure_eq!(
        repeat.first_version,
        original.first_version,
        "first version"
    );
    ensure_eq!(
        repeat.stream_version,
        original.stream_version,
        "stream version"
    );
    ensure_eq!(repeat.position, original.position, "position");
    ensure_eq!(everything(&*store).await?.len(), 3, "events in the log");
    Ok(())
}

pub(super) async fn repeated_command_id_on_another_stream_is_refused_and_writes_nothing(
    store: Arc<dyn EventStore>,
) -> Verdict {
    let command_id = Uuid::new_v4();
    store
        .append(request("a", 0, events(1)).with_command_id(command_id))
        .await
        .expect_ok("first append")?;
    let names_stream_a = |result: Result<_, Error>, what: &str| match result {
        Err(Error::CommandIdInUse {
            command_id: id,
            stream_type,
            stream_id,
        }) if id == command_id && stream_type == TYPE && stream_id == "a" => Ok(()),
        other => Err(format!(
            "{what}: expected Error::CommandIdInUse naming stream a, got {other:?}"
        )),
    };
    names_stream_a(
        store
            .append(request("b", 0, events(1)).with_command_id(command_id))
            .await
            .map(drop),
        "the repeat on another stream",
    )?;
    names_stream_a(
        store.find_command(command_id, TYPE, "b").await.map(drop),
        "find_command on another stream",
    )?;
    let b = store.load(TYPE, "b", 0).await.expect_ok("load")?;
    ensure!(
        b.is_empty(),
        "the repeat wrote {} events to another stream",
        b.len()
    );
    Ok(())
}

pub(super) async fn find_command_returns_the_original_outcome(
    store: Arc<dyn EventStore>,
) -> Verdict {
    let command_id = Uuid::new_v4();
    let unknown = store
        .find_command(command_id, TYPE, "s")
        .await
        .expect_ok("find_command")?;
    ensure!(
        unknown.is_none(),
        "an unknown command id was found: {unknown:?}"
    );
    append(&*store, "s", 0, events(1)).await?;
    let original = store
        .append(request("s", 1, events(2)).with_command_id(command_id))
        .await
        .expect_ok("append")?;
    let found = store
        .find_command(command_id, TYPE, "s")
        .await
        .expect_ok("find_command")?
        .ok_or("the command id was not found")?;
    ensure_eq!(
        (found.first_version, found.stream_version, found.position),
        (
            original.first_version,
            original.stream_version,
            original.position
        ),
        "found outcome"
    );
    Ok(())
}

pub(super) async fn racing_appends_with_one_command_id_write_once(
    store: Arc<dyn EventStore>,
) -> Verdict {
    // One command id on eight streams at once: one append writes, and the others are
    // refused, naming the stream that holds the id (whichever won).
    let command_id = Uuid::new_v4();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let stream = format!("s{i}");
            let outcome = store
                .append(request(&stream, 0, events(2)).with_command_id(command_id))
                .await;
            (stream, outcome)
        });
    }
    let mut winners = Vec::new();
    let mut named = HashSet::new();
    while let Some(joined) = tasks.join_next().await {
        let (stream, outcome) = joined.map_err(|e| format!("task panicked: {e}"))?;
        match outcome {
            Ok(outcome) if !outcome.duplicate => winners.push(stream),
            Err(Error::CommandIdInUse { stream_id, .. }) => {
                named.insert(stream_id);
            }
            other => return Err(format!("{stream}: unexpected {other:?}")),
        }
    }
    ensure_eq!(winners.len(), 1, "appends that wrote");
    ensure!(
        named.iter().all(|holder| *holder == winners[0]),
        "the refusals name {named:?}, not the stream that wrote ({})",
        winners[0]
    );
    ensure_eq!(everything(&*store).await?.len(), 2, "events in the log");
    Ok(())
}

pub(super) async fn stream_ids_past_the_limit_are_refused_and_write_nothing(
    store: Arc<dyn EventStore>,
) -> Verdict {
    let longest = "i".repeat(MAX_STREAM_ID_LEN);
    append(&*store, &longest, 0, events(1)).await?;
    for (stream_type, stream_id) in [
        (TYPE.to_owned(), "i".repeat(MAX_STREAM_ID_LEN + 1)),
        (TYPE.to_owned(), "é".repeat(MAX_STREAM_ID_LEN / 2 + 1)),
        ("t".repeat(MAX_STREAM_TYPE_LEN + 1), "s".to_owned()),
    ] {
        let refused = store
            .append(AppendRequest::new(
                stream_type.clone(),
                stream_id,
                0,
                events(1),
            ))
            .await;
        ensure!(
            matches!(refused, Err(Error::InvalidAppend { .. })),
            "a stream of type {} bytes and a too long id: expected Error::InvalidAppend, got {refused:?}",
            stream_type.len()
        );
    }
    ensure_eq!(everything(&*store).await?.len(), 1, "events in the log");
    Ok(())
}
