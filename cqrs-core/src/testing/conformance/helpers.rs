//! What the tests share: the stream type, requests, reads and comparisons.

use serde_json::{Value, json};

use super::Verdict;
use crate::store::{AppendOutcome, AppendRequest, NewEvent, RecordedEvent, ReplayEvent, Snapshot};
use crate::{Error, EventFilter, EventStore, Position};

pub(super) const TYPE: &str = "conformance";

pub(super) trait Expect<T> {
    fn expect_ok(self, what: &str) -> Result<T, String>;
}

impl<T> Expect<T> for Result<T, Error> {
    fn expect_ok(self, what: &str) -> Result<T, String> {
        self.map_err(|error| format!("{what} failed: {error} ({error:?})"))
    }
}

pub(super) fn event(event_type: &'static str, n: u64) -> NewEvent {
    NewEvent::new(event_type, 1, json!({ "n": n }))
}

pub(super) fn events(n: u64) -> Vec<NewEvent> {
    (1..=n).map(|i| event("Numbered", i)).collect()
}

pub(super) fn request(stream_id: &str, expected: u64, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest::new(TYPE, stream_id, expected, events)
}

pub(super) async fn append(
    store: &dyn EventStore,
    stream_id: &str,
    expected: u64,
    events: Vec<NewEvent>,
) -> Result<AppendOutcome, String> {
    store
        .append(request(stream_id, expected, events))
        .await
        .expect_ok("append")
}

pub(super) async fn everything(store: &dyn EventStore) -> Result<Vec<RecordedEvent>, String> {
    store
        .read_all(Position::START, usize::MAX >> 1, &EventFilter::all())
        .await
        .expect_ok("read_all")
}

pub(super) fn numbers(events: &[RecordedEvent]) -> Vec<Value> {
    events.iter().map(|e| e.payload["n"].clone()).collect()
}

pub(super) fn versions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.stream_version).collect()
}

pub(super) fn replayed_versions(events: &[ReplayEvent]) -> Vec<u64> {
    events.iter().map(|e| e.stream_version).collect()
}

pub(super) fn expect_conflict<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) -> Verdict {
    match result {
        Err(Error::Conflict { .. }) => Ok(()),
        other => Err(format!("{what}: expected Error::Conflict, got {other:?}")),
    }
}

pub(super) fn snapshot(stream_id: &str, version: u64, state_version: u32) -> Snapshot {
    Snapshot {
        stream_type: TYPE.to_owned(),
        stream_id: stream_id.to_owned(),
        stream_version: version,
        state_version,
        state: json!({ "at": version }),
    }
}
