//! The contract's tests: the global log and its head.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::json;

use super::Verdict;
use super::helpers::{Expect, append, event, events, everything, numbers, versions};
use crate::store::{AppendRequest, RecordedEvent};
use crate::{EventFilter, EventStore, Position};

pub(super) async fn read_all_returns_every_event_in_order(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "a", 0, vec![event("Numbered", 1)]).await?;
    append(
        &*store,
        "b",
        0,
        vec![event("Numbered", 2), event("Numbered", 3)],
    )
    .await?;
    append(&*store, "a", 1, vec![event("Numbered", 4)]).await?;
    let log = everything(&*store).await?;
    ensure_eq!(
        numbers(&log),
        vec![json!(1), json!(2), json!(3), json!(4)],
        "payloads in log order"
    );
    Ok(())
}

pub(super) async fn read_all_after_a_position_excludes_it(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "s", 0, events(4)).await?;
    let log = everything(&*store).await?;
    ensure_eq!(log.len(), 4, "events in the log");
    let after = store
        .read_all(log[1].position, 100, &EventFilter::all())
        .await
        .expect_ok("read_all")?;
    ensure_eq!(
        versions(&after),
        vec![3, 4],
        "versions after the second event"
    );
    let at_end = store
        .read_all(log[3].position, 100, &EventFilter::all())
        .await
        .expect_ok("read_all")?;
    ensure!(
        at_end.is_empty(),
        "reading after the last event returned {}",
        at_end.len()
    );
    Ok(())
}

pub(super) async fn read_all_in_batches_covers_the_log_exactly_once(
    store: Arc<dyn EventStore>,
) -> Verdict {
    let mut stream_versions = [0_u64; 3];
    for i in 0..7_u64 {
        let stream = usize::from(i % 3 == 1) + usize::from(i % 3 == 2) * 2;
        let count = i % 2 + 1;
        append(
            &*store,
            &format!("s{stream}"),
            stream_versions[stream],
            events(count),
        )
        .await?;
        stream_versions[stream] += count;
    }
    let whole = everything(&*store).await?;
    let mut batched = Vec::new();
    let mut after = Position::START;
    loop {
        let batch = store
            .read_all(after, 3, &EventFilter::all())
            .await
            .expect_ok("read_all")?;
        ensure!(
            batch.len() <= 3,
            "a batch of limit 3 returned {}",
            batch.len()
        );
        let Some(last) = batch.last() else { break };
        after = last.position;
        batched.extend(batch);
    }
    let ids = |events: &[RecordedEvent]| events.iter().map(|e| e.event_id).collect::<Vec<_>>();
    ensure_eq!(
        ids(&batched),
        ids(&whole),
        "event ids read in batches vs at once"
    );
    Ok(())
}

pub(super) async fn read_all_filters_by_event_type(store: Arc<dyn EventStore>) -> Verdict {
    append(
        &*store,
        "s",
        0,
        vec![
            event("Apple", 1),
            event("Pear", 2),
            event("Apple", 3),
            event("Plum", 4),
        ],
    )
    .await?;
    let filter = EventFilter {
        stream_types: Vec::new(),
        event_types: vec![Cow::Borrowed("Apple"), Cow::Borrowed("Plum")],
    };
    let read = store
        .read_all(Position::START, 100, &filter)
        .await
        .expect_ok("read_all")?;
    ensure_eq!(
        numbers(&read),
        vec![json!(1), json!(3), json!(4)],
        "filtered payloads"
    );
    let limited = store
        .read_all(Position::START, 2, &filter)
        .await
        .expect_ok("read_all")?;
    ensure_eq!(
        numbers(&limited),
        vec![json!(1), json!(3)],
        "filtered and limited payloads"
    );
    Ok(())
}

pub(super) async fn read_all_filters_by_stream_type(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "s", 0, vec![event("Apple", 1)]).await?;
    store
        .append(AppendRequest::new(
            "orchard",
            "s",
            0,
            vec![event("Apple", 2)],
        ))
        .await
        .expect_ok("append")?;
    let filter = EventFilter::all().and_stream_type("orchard");
    let read = store
        .read_all(Position::START, 100, &filter)
        .await
        .expect_ok("read_all")?;
    ensure_eq!(
        numbers(&read),
        vec![json!(2)],
        "payloads of the orchard stream type"
    );
    Ok(())
}

pub(super) async fn read_all_filters_by_both(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "s", 0, vec![event("Apple", 1), event("Pear", 2)]).await?;
    store
        .append(AppendRequest::new(
            "orchard",
            "s",
            0,
            vec![event("Apple", 3), event("Pear", 4)],
        ))
        .await
        .expect_ok("append")?;
    let filter = EventFilter {
        stream_types: vec![Cow::Borrowed("orchard")],
        event_types: vec![Cow::Borrowed("Pear")],
    };
    let read = store
        .read_all(Position::START, 100, &filter)
        .await
        .expect_ok("read_all")?;
    ensure_eq!(
        numbers(&read),
        vec![json!(4)],
        "payloads passing both filters"
    );
    Ok(())
}

pub(super) async fn read_all_keeps_an_append_contiguous_and_in_version_order(
    store: Arc<dyn EventStore>,
) -> Verdict {
    append(&*store, "a", 0, events(1)).await?;
    append(&*store, "b", 0, events(5)).await?;
    append(&*store, "a", 1, events(1)).await?;
    let log = everything(&*store).await?;
    let streams: Vec<&str> = log.iter().map(|e| e.stream_id.as_str()).collect();
    ensure_eq!(
        streams,
        vec!["a", "b", "b", "b", "b", "b", "a"],
        "streams in log order"
    );
    ensure_eq!(
        versions(&log[1..6]),
        vec![1, 2, 3, 4, 5],
        "versions of the five-event append"
    );
    Ok(())
}

pub(super) async fn positions_grow_across_appends(store: Arc<dyn EventStore>) -> Verdict {
    let mut last = Position::START;
    for i in 0..5_u64 {
        let outcome = append(&*store, &format!("s{}", i % 2), i / 2 * 2, events(2)).await?;
        ensure!(
            outcome.position > last,
            "position {} after {last}",
            outcome.position
        );
        last = outcome.position;
    }
    let log = everything(&*store).await?;
    ensure!(
        log.windows(2)
            .all(|pair| pair[0].position < pair[1].position),
        "log positions are not strictly increasing"
    );
    Ok(())
}

pub(super) async fn head_is_start_for_an_empty_store(store: Arc<dyn EventStore>) -> Verdict {
    ensure_eq!(
        store.head().await.expect_ok("head")?,
        Position::START,
        "head of an empty store"
    );
    Ok(())
}

pub(super) async fn head_is_the_last_event_position(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "a", 0, events(2)).await?;
    let outcome = append(&*store, "b", 0, events(3)).await?;
    ensure_eq!(
        store.head().await.expect_ok("head")?,
        outcome.position,
        "head"
    );
    Ok(())
}
