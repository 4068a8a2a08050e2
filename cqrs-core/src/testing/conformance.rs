//! The storage conformance suite: the [`EventStore`] contract as executable tests.
//!
//! Every backend in this workspace runs it, and a third-party backend proves itself with
//! one call. Give [`run`] a function that makes a fresh, empty store; it is called once
//! per test, so tests never see each other's data (for a database backend, hand out a
//! new schema or database each time):
//!
//! ```
//! use cqrs_core::memory::MemoryEventStore;
//! use cqrs_core::testing::conformance;
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! conformance::run(|| async { MemoryEventStore::new() }).await;
//! # });
//! ```
//!
//! In a backend's own test suite this is a single `#[tokio::test]`:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread")]
//! async fn conforms_to_the_event_store_contract() {
//!     conformance::run(|| async { MyStore::connect_to_fresh_schema().await.unwrap() }).await;
//! }
//! ```
//!
//! [`run`] panics with the name and reason of every failing test. [`tests`] lists them,
//! for a backend that wants to run them one by one.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    AppendOutcome, AppendRequest, Error, EventFilter, EventStore, Metadata, NewEvent, Position,
    RecordedEvent, ReplayEvent, Snapshot,
};

/// The result of one conformance test: `Err` explains the violation.
pub type Verdict = Result<(), String>;

type Check = Pin<Box<dyn Future<Output = Verdict> + Send>>;

/// One named test of the contract.
#[derive(Clone, Copy)]
pub struct ConformanceTest {
    name: &'static str,
    run: fn(Arc<dyn EventStore>) -> Check,
}

impl std::fmt::Debug for ConformanceTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConformanceTest").field(&self.name).finish()
    }
}

impl ConformanceTest {
    /// The test's name, which states the rule it checks.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Runs the test on a fresh, empty store.
    pub async fn run(&self, store: Arc<dyn EventStore>) -> Verdict {
        (self.run)(store).await
    }
}

/// Runs every conformance test, each on a store fresh from `new_store`.
///
/// # Panics
///
/// When a test fails, after all have run, listing each failing test and its reason.
pub async fn run<F, Fut, S>(mut new_store: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
    S: EventStore,
{
    let mut failures = Vec::new();
    for test in tests() {
        let store: Arc<dyn EventStore> = Arc::new(new_store().await);
        if let Err(reason) = test.run(store).await {
            failures.push(format!("  {}: {reason}", test.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} event store conformance tests failed:\n{}",
        failures.len(),
        tests().len(),
        failures.join("\n")
    );
}

/// Every conformance test.
#[must_use]
pub fn tests() -> &'static [ConformanceTest] {
    TESTS
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        const TESTS: &[ConformanceTest] = &[
            $(ConformanceTest { name: stringify!($name), run: |store| Box::pin($name(store)) },)*
        ];
    };
}

suite![
    loading_a_missing_stream_returns_no_events,
    first_append_expects_version_zero,
    append_assigns_contiguous_versions,
    append_outcome_reports_versions_and_last_position,
    load_returns_events_in_version_order,
    load_after_a_version_returns_only_the_tail,
    load_after_the_last_version_is_empty,
    stale_expected_version_conflicts,
    expected_version_ahead_of_the_stream_conflicts,
    new_stream_with_nonzero_expected_version_conflicts,
    conflict_writes_nothing,
    conflict_names_the_stream_and_expected_version,
    streams_are_isolated_by_id,
    streams_are_isolated_by_type,
    empty_append_is_rejected_and_writes_nothing,
    empty_stream_id_is_rejected,
    schema_version_zero_is_rejected_and_writes_nothing,
    stored_fields_round_trip,
    recorded_at_is_set_by_the_store,
    event_id_already_stored_is_rejected_and_writes_nothing,
    event_id_twice_in_one_append_is_rejected,
    repeated_command_id_returns_original_outcome_and_writes_nothing,
    repeated_command_id_on_another_stream_writes_nothing,
    find_command_returns_the_original_outcome,
    racing_appends_with_one_command_id_write_once,
    read_all_returns_every_event_in_order,
    read_all_after_a_position_excludes_it,
    read_all_in_batches_covers_the_log_exactly_once,
    read_all_filters_by_event_type,
    read_all_filters_by_stream_type,
    read_all_filters_by_both,
    read_all_keeps_an_append_contiguous_and_in_version_order,
    positions_grow_across_appends,
    head_is_start_for_an_empty_store,
    head_is_the_last_event_position,
    snapshot_of_unknown_stream_is_none,
    snapshot_round_trips,
    newer_snapshot_replaces_older,
    older_snapshot_never_replaces_newer,
    load_for_command_returns_snapshot_and_tail,
    load_for_command_ignores_other_state_versions,
    load_for_command_without_snapshot_returns_whole_stream,
    racing_appends_on_one_stream_have_one_winner,
    concurrent_appends_on_many_streams_all_land,
    odd_stream_ids_round_trip,
    large_payload_round_trips,
];

// ----- helpers -------------------------------------------------------------------------

const TYPE: &str = "conformance";

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($msg:tt)+) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            return Err(format!("{}: got {:?}, expected {:?}", format!($($msg)+), left, right));
        }
    }};
}

trait Expect<T> {
    fn expect_ok(self, what: &str) -> Result<T, String>;
}

impl<T> Expect<T> for Result<T, Error> {
    fn expect_ok(self, what: &str) -> Result<T, String> {
        self.map_err(|error| format!("{what} failed: {error} ({error:?})"))
    }
}

fn event(event_type: &'static str, n: u64) -> NewEvent {
    NewEvent::new(event_type, 1, json!({ "n": n }))
}

fn events(n: u64) -> Vec<NewEvent> {
    (1..=n).map(|i| event("Numbered", i)).collect()
}

fn request(stream_id: &str, expected: u64, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest::new(TYPE, stream_id, expected, events)
}

async fn append(
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

async fn everything(store: &dyn EventStore) -> Result<Vec<RecordedEvent>, String> {
    store
        .read_all(Position::START, usize::MAX >> 1, &EventFilter::all())
        .await
        .expect_ok("read_all")
}

fn numbers(events: &[RecordedEvent]) -> Vec<Value> {
    events.iter().map(|e| e.payload["n"].clone()).collect()
}

fn versions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.stream_version).collect()
}

fn replayed_versions(events: &[ReplayEvent]) -> Vec<u64> {
    events.iter().map(|e| e.stream_version).collect()
}

fn expect_conflict<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) -> Verdict {
    match result {
        Err(Error::Conflict { .. }) => Ok(()),
        other => Err(format!("{what}: expected Error::Conflict, got {other:?}")),
    }
}

fn snapshot(stream_id: &str, version: u64, state_version: u32) -> Snapshot {
    Snapshot {
        stream_type: TYPE.to_owned(),
        stream_id: stream_id.to_owned(),
        stream_version: version,
        state_version,
        state: json!({ "at": version }),
    }
}

// ----- streams -------------------------------------------------------------------------

async fn loading_a_missing_stream_returns_no_events(store: Arc<dyn EventStore>) -> Verdict {
    let loaded = store.load(TYPE, "nobody", 0).await.expect_ok("load")?;
    ensure!(
        loaded.is_empty(),
        "a missing stream loaded {} events",
        loaded.len()
    );
    Ok(())
}

async fn first_append_expects_version_zero(store: Arc<dyn EventStore>) -> Verdict {
    let outcome = append(&*store, "s", 0, events(1)).await?;
    ensure_eq!(
        outcome.stream_version,
        1,
        "stream version after the first append"
    );
    ensure!(!outcome.duplicate, "a first append reported duplicate");
    Ok(())
}

async fn append_assigns_contiguous_versions(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "s", 0, events(3)).await?;
    append(&*store, "s", 3, events(2)).await?;
    let loaded = store.load(TYPE, "s", 0).await.expect_ok("load")?;
    ensure_eq!(versions(&loaded), vec![1, 2, 3, 4, 5], "versions");
    Ok(())
}

async fn append_outcome_reports_versions_and_last_position(store: Arc<dyn EventStore>) -> Verdict {
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

async fn load_returns_events_in_version_order(store: Arc<dyn EventStore>) -> Verdict {
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

async fn load_after_a_version_returns_only_the_tail(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "s", 0, events(6)).await?;
    let tail = store.load(TYPE, "s", 4).await.expect_ok("load")?;
    ensure_eq!(versions(&tail), vec![5, 6], "versions after 4");
    Ok(())
}

async fn load_after_the_last_version_is_empty(store: Arc<dyn EventStore>) -> Verdict {
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

async fn stale_expected_version_conflicts(store: Arc<dyn EventStore>) -> Verdict {
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

async fn expected_version_ahead_of_the_stream_conflicts(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "s", 0, events(2)).await?;
    expect_conflict(
        store.append(request("s", 5, events(1))).await,
        "expected 5 at version 2",
    )
}

async fn new_stream_with_nonzero_expected_version_conflicts(store: Arc<dyn EventStore>) -> Verdict {
    expect_conflict(
        store.append(request("new", 1, events(1))).await,
        "expected 1 on a new stream",
    )
}

async fn conflict_writes_nothing(store: Arc<dyn EventStore>) -> Verdict {
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

async fn conflict_names_the_stream_and_expected_version(store: Arc<dyn EventStore>) -> Verdict {
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

async fn streams_are_isolated_by_id(store: Arc<dyn EventStore>) -> Verdict {
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

async fn streams_are_isolated_by_type(store: Arc<dyn EventStore>) -> Verdict {
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

async fn empty_append_is_rejected_and_writes_nothing(store: Arc<dyn EventStore>) -> Verdict {
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

async fn empty_stream_id_is_rejected(store: Arc<dyn EventStore>) -> Verdict {
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

async fn schema_version_zero_is_rejected_and_writes_nothing(store: Arc<dyn EventStore>) -> Verdict {
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

async fn stored_fields_round_trip(store: Arc<dyn EventStore>) -> Verdict {
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

async fn recorded_at_is_set_by_the_store(store: Arc<dyn EventStore>) -> Verdict {
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

async fn event_id_already_stored_is_rejected_and_writes_nothing(
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

async fn event_id_twice_in_one_append_is_rejected(store: Arc<dyn EventStore>) -> Verdict {
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

async fn repeated_command_id_returns_original_outcome_and_writes_nothing(
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

async fn repeated_command_id_on_another_stream_writes_nothing(
    store: Arc<dyn EventStore>,
) -> Verdict {
    let command_id = Uuid::new_v4();
    store
        .append(request("a", 0, events(1)).with_command_id(command_id))
        .await
        .expect_ok("first append")?;
    let repeat = store
        .append(request("b", 0, events(1)).with_command_id(command_id))
        .await
        .expect_ok("repeated append")?;
    ensure!(
        repeat.duplicate,
        "the repeat was not flagged as a duplicate"
    );
    let b = store.load(TYPE, "b", 0).await.expect_ok("load")?;
    ensure!(
        b.is_empty(),
        "the repeat wrote {} events to another stream",
        b.len()
    );
    Ok(())
}

async fn find_command_returns_the_original_outcome(store: Arc<dyn EventStore>) -> Verdict {
    let command_id = Uuid::new_v4();
    let unknown = store
        .find_command(command_id)
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
        .find_command(command_id)
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

async fn racing_appends_with_one_command_id_write_once(store: Arc<dyn EventStore>) -> Verdict {
    let command_id = Uuid::new_v4();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            store
                .append(request(&format!("s{i}"), 0, events(2)).with_command_id(command_id))
                .await
        });
    }
    let mut written = 0;
    let mut positions = HashSet::new();
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined
            .map_err(|e| format!("task panicked: {e}"))?
            .expect_ok("append")?;
        if !outcome.duplicate {
            written += 1;
        }
        positions.insert(outcome.position);
    }
    ensure_eq!(written, 1, "appends that wrote");
    ensure_eq!(positions.len(), 1, "distinct outcomes reported");
    ensure_eq!(everything(&*store).await?.len(), 2, "events in the log");
    Ok(())
}

// ----- global log ----------------------------------------------------------------------

async fn read_all_returns_every_event_in_order(store: Arc<dyn EventStore>) -> Verdict {
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

async fn read_all_after_a_position_excludes_it(store: Arc<dyn EventStore>) -> Verdict {
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

async fn read_all_in_batches_covers_the_log_exactly_once(store: Arc<dyn EventStore>) -> Verdict {
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

async fn read_all_filters_by_event_type(store: Arc<dyn EventStore>) -> Verdict {
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

async fn read_all_filters_by_stream_type(store: Arc<dyn EventStore>) -> Verdict {
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

async fn read_all_filters_by_both(store: Arc<dyn EventStore>) -> Verdict {
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

async fn read_all_keeps_an_append_contiguous_and_in_version_order(
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

async fn positions_grow_across_appends(store: Arc<dyn EventStore>) -> Verdict {
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

async fn head_is_start_for_an_empty_store(store: Arc<dyn EventStore>) -> Verdict {
    ensure_eq!(
        store.head().await.expect_ok("head")?,
        Position::START,
        "head of an empty store"
    );
    Ok(())
}

async fn head_is_the_last_event_position(store: Arc<dyn EventStore>) -> Verdict {
    append(&*store, "a", 0, events(2)).await?;
    let outcome = append(&*store, "b", 0, events(3)).await?;
    ensure_eq!(
        store.head().await.expect_ok("head")?,
        outcome.position,
        "head"
    );
    Ok(())
}

// ----- snapshots -----------------------------------------------------------------------

async fn snapshot_of_unknown_stream_is_none(store: Arc<dyn EventStore>) -> Verdict {
    let found = store
        .load_snapshot(TYPE, "s")
        .await
        .expect_ok("load_snapshot")?;
    ensure!(found.is_none(), "found {found:?}");
    Ok(())
}

async fn snapshot_round_trips(store: Arc<dyn EventStore>) -> Verdict {
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

async fn newer_snapshot_replaces_older(store: Arc<dyn EventStore>) -> Verdict {
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

async fn older_snapshot_never_replaces_newer(store: Arc<dyn EventStore>) -> Verdict {
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

async fn load_for_command_returns_snapshot_and_tail(store: Arc<dyn EventStore>) -> Verdict {
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

async fn load_for_command_ignores_other_state_versions(store: Arc<dyn EventStore>) -> Verdict {
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

async fn load_for_command_without_snapshot_returns_whole_stream(
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

// ----- concurrency and odd input -------------------------------------------------------

async fn racing_appends_on_one_stream_have_one_winner(store: Arc<dyn EventStore>) -> Verdict {
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

async fn concurrent_appends_on_many_streams_all_land(store: Arc<dyn EventStore>) -> Verdict {
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

async fn odd_stream_ids_round_trip(store: Arc<dyn EventStore>) -> Verdict {
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

async fn large_payload_round_trips(store: Arc<dyn EventStore>) -> Verdict {
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
