use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::watch;
use uuid::Uuid;

use crate::store::{
    AppendOutcome, AppendRequest, AtomicAppendOutcome, AtomicAppendRequest, LoadedStream,
    RecordedEvent, ReplayEvent, Snapshot,
};
use crate::{Error, EventFilter, EventStore, Position, Result};

/// An event store held in memory, for tests, examples and prototypes.
///
/// It implements the whole [`EventStore`] contract with the same semantics as the
/// database backends (it passes the same conformance suite) and is safe to share between
/// many tasks: clones are handles to the same store.
///
/// ```
/// use cqrs_core::memory::MemoryEventStore;
/// use cqrs_core::{EventStore, Position};
/// use cqrs_core::store::{AppendRequest, NewEvent};
///
/// # tokio_test(async {
/// let store = MemoryEventStore::new();
/// let event = NewEvent::new("Opened", 1, serde_json::json!({ "owner": "ada" }));
/// let outcome = store.append(AppendRequest::new("account", "a-1", 0, vec![event])).await?;
/// assert_eq!(outcome.stream_version, 1);
/// assert_eq!(store.load("account", "a-1", 0).await?.len(), 1);
/// assert_eq!(store.read_all(Position::START, 10, &Default::default()).await?.len(), 1);
/// # Ok::<(), cqrs_core::Error>(())
/// # });
/// # fn tokio_test<F: std::future::Future<Output = Result<(), cqrs_core::Error>>>(f: F) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f).unwrap()
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryEventStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    head: watch::Sender<Position>,
    latency: Option<Duration>,
}

#[derive(Debug, Default)]
struct State {
    /// The global log; the event at index `i` has sequence `i + 1`.
    log: Vec<RecordedEvent>,
    /// Per stream, the log indexes of its events in version order.
    streams: HashMap<(String, String), Vec<usize>>,
    snapshots: HashMap<(String, String), Snapshot>,
    /// The outcome of each append with a command id, with its stream (for an atomic
    /// unit, its first stream's).
    commands: HashMap<Uuid, ((String, String), AppendOutcome)>,
    /// The outcomes of each atomic unit with a command id, with its first stream.
    units: HashMap<Uuid, ((String, String), Vec<AppendOutcome>)>,
    event_ids: HashSet<Uuid>,
    commits: u64,
}

impl Default for MemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEventStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::build(None)
    }

    /// An empty store whose every call first waits `latency`, as a store across a
    /// network would: useful to see concurrency (conflicts, retries, queueing) in tests
    /// and demonstrations.
    #[must_use]
    pub fn with_latency(latency: Duration) -> Self {
        Self::build(Some(latency))
    }

    fn build(latency: Option<Duration>) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                head: watch::channel(Position::START).0,
                latency,
            }),
        }
    }

    async fn round_trip(&self) {
        if let Some(latency) = self.shared.latency {
            tokio::time::sleep(latency).await;
        }
    }

    /// A receiver that sees the head position change after every append: the live
    /// wake-up for in-memory projections.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Position> {
        self.shared.head.subscribe()
    }

    /// Number of events in the store.
    #[must_use]
    pub fn len(&self) -> usize {
        self.state().log.len()
    }

    /// Whether the store holds no events.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written: every
        // mutation below validates first and then only pushes. So a poisoned lock is safe
        // to keep using.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl MemoryEventStore {
    fn stream(&self, stream_type: &str, stream_id: &str, after_version: u64) -> Vec<RecordedEvent> {
        let state = self.state();
        state
            .streams
            .get(&key(stream_type, stream_id))
            .map(|indexes| {
                let skip = usize::try_from(after_version).unwrap_or(usize::MAX);
                indexes
                    .iter()
                    .skip(skip)
                    .map(|&index| state.log[index].clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn key(stream_type: &str, stream_id: &str) -> (String, String) {
    (stream_type.to_owned(), stream_id.to_owned())
}

/// The outcome recorded for `command_id`, as a duplicate, if it was recorded for
/// `stream`; an error naming the stream it was recorded for otherwise.
fn recorded(
    state: &State,
    command_id: Uuid,
    stream: &(String, String),
) -> Result<Option<AppendOutcome>> {
    match state.commands.get(&command_id) {
        None => Ok(None),
        Some((holder, outcome)) if holder == stream => Ok(Some(AppendOutcome {
            duplicate: true,
            ..*outcome
        })),
        Some(((stream_type, stream_id), _)) => Err(Error::CommandIdInUse {
            command_id,
            stream_type: stream_type.clone(),
            stream_id: stream_id.clone(),
        }),
    }
}

fn in_use(command_id: Uuid, (stream_type, stream_id): &(String, String)) -> Error {
    Error::CommandIdInUse {
        command_id,
        stream_type: stream_type.clone(),
        stream_id: stream_id.clone(),
    }
}

/// Refuses `request` unless its stream is at its expected version and none of its event
/// ids is stored.
fn check(state: &State, request: &AppendRequest) -> Result<()> {
    let current = state
        .streams
        .get(&key(&request.stream_type, &request.stream_id))
        .map_or(0, |indexes| indexes.len() as u64);
    if current != request.expected_version {
        return Err(Error::Conflict {
            stream_type: request.stream_type.clone().into_owned(),
            stream_id: request.stream_id.clone(),
            expected: request.expected_version,
        });
    }
    if let Some(taken) = request
        .events
        .iter()
        .find(|event| state.event_ids.contains(&event.event_id))
    {
        return Err(Error::DuplicateEventId {
            event_id: taken.event_id,
        });
    }
    Ok(())
}

/// Writes `request` (checked) as part of `commit`.
fn write(
    state: &mut State,
    request: AppendRequest,
    commit: u64,
    recorded_at: chrono::DateTime<Utc>,
) -> AppendOutcome {
    let stream_key = (request.stream_type.into_owned(), request.stream_id);
    let current = request.expected_version;
    let first_index = state.log.len();
    let mut version = current;
    for event in request.events {
        version += 1;
        let sequence = state.log.len() as u64 + 1;
        state.event_ids.insert(event.event_id);
        state.log.push(RecordedEvent {
            event_id: event.event_id,
            stream_type: stream_key.0.clone(),
            stream_id: stream_key.1.clone(),
            stream_version: version,
            position: Position::new(commit, sequence),
            event_type: event.event_type.into_owned(),
            schema_version: event.schema_version,
            metadata: event.metadata,
            recorded_at,
            payload: event.payload,
        });
    }
    let last_index = state.log.len();
    state
        .streams
        .entry(stream_key)
        .or_default()
        .extend(first_index..last_index);
    AppendOutcome {
        first_version: current + 1,
        stream_version: version,
        position: state.log[last_index - 1].position,
        duplicate: false,
    }
}

#[async_trait]
impl EventStore for MemoryEventStore {
    async fn load(
        &self,
        stream_type: &str,
        stream_id: &str,
        after_version: u64,
    ) -> Result<Vec<RecordedEvent>> {
        self.round_trip().await;
        Ok(self.stream(stream_type, stream_id, after_version))
    }

    async fn load_for_command(
        &self,
        stream_type: &str,
        stream_id: &str,
        state_version: u32,
    ) -> Result<LoadedStream> {
        self.round_trip().await;
        let snapshot = {
            let state = self.state();
            let reached = state
                .streams
                .get(&key(stream_type, stream_id))
                .map_or(0, |indexes| indexes.len() as u64);
            let stored = state.snapshots.get(&key(stream_type, stream_id));
            if let Some(ahead) = stored.filter(|s| s.stream_version > reached) {
                tracing::warn!(
                    stream_type,
                    stream_id,
                    version = ahead.stream_version,
                    "the stored snapshot is ahead of its stream; ignored"
                );
            }
            stored
                .filter(|s| s.state_version == state_version && s.stream_version <= reached)
                .cloned()
        };
        let after = snapshot.as_ref().map_or(0, |s| s.stream_version);
        let events = self
            .stream(stream_type, stream_id, after)
            .into_iter()
            .map(ReplayEvent::from)
            .collect();
        Ok(LoadedStream { snapshot, events })
    }

    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome> {
        self.round_trip().await;
        request.validate()?;
        let mut state = self.state();
        let stream_key = (
            request.stream_type.clone().into_owned(),
            request.stream_id.clone(),
        );
        if let Some(command_id) = request.command_id
            && let Some(original) = recorded(&state, command_id, &stream_key)?
        {
            return Ok(original);
        }
        check(&state, &request)?;
        // Checked: from here on the append only pushes, so it is all or nothing.
        state.commits += 1;
        let commit = state.commits;
        let command_id = request.command_id;
        let outcome = write(&mut state, request, commit, Utc::now());
        if let Some(command_id) = command_id {
            state.commands.insert(command_id, (stream_key, outcome));
        }
        drop(state);
        self.shared.head.send_replace(outcome.position);
        Ok(outcome)
    }

    async fn append_atomic(&self, request: AtomicAppendRequest) -> Result<AtomicAppendOutcome> {
        self.round_trip().await;
        request.validate()?;
        let mut state = self.state();
        let first = request
            .appends
            .first()
            .map(|a| (a.stream_type.clone().into_owned(), a.stream_id.clone()))
            .unwrap_or_default();
        if let Some(command_id) = request.command_id {
            if let Some((holder, outcomes)) = state.units.get(&command_id) {
                if *holder != first {
                    return Err(in_use(command_id, holder));
                }
                return Ok(outcomes
                    .iter()
                    .map(|o| AppendOutcome {
                        duplicate: true,
                        ..*o
                    })
                    .collect());
            }
            if let Some((holder, _)) = state.commands.get(&command_id) {
                return Err(in_use(command_id, holder));
            }
        }
        for append in &request.appends {
            check(&state, append)?;
        }
        // Every stream checked: one commit writes them all.
        state.commits += 1;
        let commit = state.commits;
        let recorded_at = Utc::now();
        let outcomes: Vec<AppendOutcome> = request
            .appends
            .into_iter()
            .map(|append| write(&mut state, append, commit, recorded_at))
            .collect();
        if let (Some(command_id), Some(head)) = (request.command_id, outcomes.first()) {
            state.commands.insert(command_id, (first.clone(), *head));
            state.units.insert(command_id, (first, outcomes.clone()));
        }
        let last = state.log.last().map(|e| e.position);
        drop(state);
        if let Some(last) = last {
            self.shared.head.send_replace(last);
        }
        Ok(outcomes)
    }

    async fn find_command(
        &self,
        command_id: Uuid,
        stream_type: &str,
        stream_id: &str,
    ) -> Result<Option<AppendOutcome>> {
        self.round_trip().await;
        recorded(&self.state(), command_id, &key(stream_type, stream_id))
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<Vec<RecordedEvent>> {
        self.round_trip().await;
        let state = self.state();
        // Positions grow with the log index, so the first event after `after` is found by
        // binary search.
        let start = state.log.partition_point(|event| event.position <= after);
        Ok(state.log[start..]
            .iter()
            .filter(|event| filter.matches(&event.stream_type, &event.event_type))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn head(&self) -> Result<Position> {
        self.round_trip().await;
        Ok(self
            .state()
            .log
            .last()
            .map_or(Position::START, |event| event.position))
    }

    async fn load_snapshot(&self, stream_type: &str, stream_id: &str) -> Result<Option<Snapshot>> {
        self.round_trip().await;
        Ok(self
            .state()
            .snapshots
            .get(&key(stream_type, stream_id))
            .cloned())
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.round_trip().await;
        let mut state = self.state();
        let slot = key(&snapshot.stream_type, &snapshot.stream_id);
        let reached = state
            .streams
            .get(&slot)
            .map_or(0, |indexes| indexes.len() as u64);
        if snapshot.stream_version == 0 || snapshot.stream_version > reached {
            return Err(Error::InvalidSnapshot {
                stream_type: slot.0,
                stream_id: slot.1,
                reason: "the stream has no event at its version",
            });
        }
        match state.snapshots.get(&slot) {
            Some(stored) if stored.stream_version > snapshot.stream_version => {}
            _ => {
                state.snapshots.insert(slot, snapshot);
            }
        }
        Ok(())
    }
}
