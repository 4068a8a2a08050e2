//! The contract's tests: concurrency and odd input.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use super::Verdict;
use super::helpers::{Expect, TYPE, append, event, events, everything, request, versions};
use crate::store::NewEvent;
use crate::{Error, EventStore};

pub(super) async fn racing_appends_on_one_stream_have_one_winner(
    store: Arc<dyn EventStore>,
) -> Verdict {
    append(&*store, "hot", 0, events(1)).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            store
                .append(request("hot", 1, vec![event("Numbered", 100 + i)]))
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
    ensure_eq!((won, conflicts), (1, 15), "(winners, conflicts)");
    let loaded = store.load(TYPE, "hot", 0).await.expect_ok("load")?;
    ensure_eq!(versions(&loaded), vec![1, 2], "versions");
    Ok(())
}

pub(super) async fn concurrent_appends_on_many_streams_all_land(
    store: Arc<dyn EventStore>,
) -> Verdict {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16_u64 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let id = format!("s{i}");
            for round in 0..5_u64 {
                store
                    .append(request(&id, round * 2, events(2)))
                    .await
                    .expect_ok("append")?;
            }
            Ok::<_, String>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| format!("task panicked: {e}"))??;
    }
    for i in 0..16 {
        let loaded = store
            .load(TYPE, &format!("s{i}"), 0)
            .await
            .expect_ok("load")?;
        ensure_eq!(
            versions(&loaded),
            (1..=10).collect::<Vec<_>>(),
            "versions of s{i}"
        );
    }
    let log = everything(&*store).await?;
    ensure_eq!(log.len(), 160, "events in the log");
    let ids: HashSet<Uuid> = log.iter().map(|e| e.event_id).collect();
    ensure_eq!(ids.len(), 160, "distinct event ids in the log");
    Ok(())
}

pub(super) async fn odd_stream_ids_round_trip(store: Arc<dyn EventStore>) -> Verdict {
    let long = "x".repeat(1024);
    let ids = [
        "it's \"quoted\"",
        "back\\slash",
        "ünïcødé-👍-日本",
        "semi;colon -- comment",
        "percent%_under",
        "  spaced  ",
        long.as_str(),
    ];
    for id in ids {
        append(&*store, id, 0, events(1)).await?;
        let loaded = store.load(TYPE, id, 0).await.expect_ok("load")?;
        ensure_eq!(loaded.len(), 1, "events of stream {id:?}");
        ensure_eq!(loaded[0].stream_id, id, "stored stream id");
    }
    ensure_eq!(
        everything(&*store).await?.len(),
        ids.len(),
        "events in the log"
    );
    Ok(())
}

pub(super) async fn large_payload_round_trips(store: Arc<dyn EventStore>) -> Verdict {
    let big = "é".repeat(512 * 1024); // 1 MiB of UTF-8
    let payload = json!({ "blob": big });
    append(
        &*store,
        "s",
        0,
        vec![NewEvent::new("Big", 1, payload.clone())],
    )
    .await?;
    let loaded = store.load(TYPE, "s", 0).await.expect_ok("load")?;
    ensure!(
        loaded.first().is_some_and(|e| e.payload == payload),
        "the 1 MiB payload changed"
    );
    Ok(())
}
