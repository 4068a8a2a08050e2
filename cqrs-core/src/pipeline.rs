use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tracing::{Instrument, debug, field, warn};
use uuid::Uuid;

use crate::cache::{KeyedLocks, StateCache};
use crate::{
    Aggregate, AppendOutcome, AppendRequest, Command, CommandMetadata, Error, EventStore, Metadata,
    NewEvent, Position, ReplayEvent, Snapshot, SnapshotPolicy,
};

/// How the pipeline reacts to a concurrency conflict: reload the aggregate and run the
/// (pure) handler again, up to `max_retries` times, sleeping a jittered, exponentially
/// growing delay between attempts.
///
/// ```
/// use std::time::Duration;
/// use cqrs_core::RetryPolicy;
///
/// let patient = RetryPolicy::new(20).with_backoff(Duration::from_millis(2), Duration::from_millis(200));
/// assert_eq!(patient.max_retries(), 20);
/// assert_eq!(RetryPolicy::never().max_retries(), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_retries: u32,
    base_delay: Duration,
    max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 10 retries, backing off from 1 ms up to 50 ms.
    fn default() -> Self {
        Self {
            max_retries: 10,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(50),
        }
    }
}

impl RetryPolicy {
    /// Retries up to `max_retries` times with the default backoff.
    #[must_use]
    pub fn new(max_retries: u32) -> Self {
        Self {
            max_retries,
            ..Self::default()
        }
    }

    /// Never retries: the first conflict is returned to the caller.
    #[must_use]
    pub fn never() -> Self {
        Self::new(0)
    }

    /// Sets the backoff: the delay before retry `n` is drawn uniformly from
    /// `[0, min(max, base * 2^n)]`.
    #[must_use]
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base_delay = base;
        self.max_delay = max.max(base);
        self
    }

    /// How many times a conflicting command is re-run.
    #[must_use]
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    fn delay(&self, retry: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(1_u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        // Full jitter; the randomness of a v4 uuid is plenty for spreading retries.
        let random = u64::try_from(Uuid::new_v4().as_u128() >> 64).unwrap_or(0);
        Duration::from_nanos(random % nanos)
    }
}

/// What a successful command did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CommandOutcome<E> {
    /// The stream's version after the command (unchanged when it recorded no events).
    pub stream_version: u64,
    /// The events the command recorded, in order (empty when it decided nothing changes).
    pub events: Vec<E>,
    /// Position of the last recorded event: a read-your-writes token. Pass it to a
    /// projection's wait to read a view that includes this command. `None` when nothing
    /// was recorded.
    pub position: Option<Position>,
    /// The command id (the caller's, or a generated one).
    pub command_id: Uuid,
    /// The correlation id carried by the events.
    pub correlation_id: Uuid,
    /// `true` when the command id had been executed before: nothing was appended now, and
    /// `events`, `stream_version` and `position` describe the original execution.
    pub duplicate: bool,
    /// How many times the command was re-run after a concurrency conflict.
    pub retries: u32,
}

/// Why a command did not succeed. Each variant calls for a different reaction.
#[derive(Debug)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// The aggregate refused the command (a business rule). Nothing was written.
    ///
    /// Report it to the user; retrying the same command against the same state gives the
    /// same answer.
    Rejected(E),
    /// Other writers kept changing the aggregate and the retries ran out. Nothing was
    /// written.
    ///
    /// The aggregate is hot: retry later, raise the [`RetryPolicy`], or route its
    /// commands through one process (see the backend's in-process serialisation).
    Conflict {
        /// The aggregate type.
        aggregate_type: &'static str,
        /// The aggregate id.
        aggregate_id: String,
        /// How many times the command was tried.
        attempts: u32,
    },
    /// [`Cqrs::dispatch`] was given a command that carries no aggregate id. Nothing was
    /// written.
    ///
    /// A bug in the caller: use [`Cqrs::execute`] with an explicit id.
    MissingAggregateId {
        /// The command's name.
        command: &'static str,
    },
    /// The storage failed, or stored data could not be decoded.
    ///
    /// For [`Error::Backend`], retry the command (with the same command id, so a write
    /// that did land is not repeated); for decoding errors, fix the code or the data.
    Store(Error),
}

impl<E: fmt::Display> fmt::Display for CommandError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(_) => f.write_str("command rejected"),
            Self::Conflict {
                aggregate_type,
                aggregate_id,
                attempts,
            } => write!(
                f,
                "aggregate `{aggregate_type}/{aggregate_id}` kept changing: gave up after {attempts} attempts"
            ),
            Self::MissingAggregateId { command } => {
                write!(f, "command `{command}` carries no aggregate id")
            }
            Self::Store(_) => f.write_str("event store failed"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CommandError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Rejected(error) => Some(error),
            Self::Store(error) => Some(error),
            Self::Conflict { .. } | Self::MissingAggregateId { .. } => None,
        }
    }
}

impl<E> From<Error> for CommandError<E> {
    fn from(error: Error) -> Self {
        Self::Store(error)
    }
}

impl<E> CommandError<E> {
    /// The domain error, if the aggregate refused the command.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            Self::Rejected(error) => Some(error),
            _ => None,
        }
    }
}

/// An aggregate's state as loaded from its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The version of the last event folded into it (0 for a new aggregate).
    pub version: u64,
}

/// The command pipeline for one aggregate type on one store.
///
/// `execute` loads the aggregate (snapshot + tail), runs its pure `handle`, appends the
/// events with the loaded version as the expected version, and on a conflict reloads and
/// runs `handle` again per the [`RetryPolicy`]. It then writes a snapshot when the
/// [`SnapshotPolicy`] says so (in the background: the reply never waits for it) and
/// returns a [`CommandOutcome`] whose position token gives read-your-writes.
///
/// Cheap to share: wrap it in an `Arc`, or clone the store handle and build one per task.
pub struct Cqrs<A: Aggregate, S: ?Sized> {
    store: Arc<S>,
    services: Arc<A::Services>,
    retry: RetryPolicy,
    snapshots: SnapshotPolicy,
    local: Option<Arc<Local<A>>>,
}

/// In-process state shared by the clones of one pipeline.
#[derive(Debug)]
struct Local<A> {
    cache: StateCache<A>,
    locks: KeyedLocks,
}

impl<A: Aggregate, S: ?Sized> fmt::Debug for Cqrs<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cqrs")
            .field("aggregate", &A::TYPE)
            .field("retry", &self.retry)
            .field("snapshots", &self.snapshots)
            .field("cached", &self.local.is_some())
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate, S: ?Sized> Clone for Cqrs<A, S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            services: Arc::clone(&self.services),
            retry: self.retry,
            snapshots: self.snapshots,
            local: self.local.clone(),
        }
    }
}

impl<A, S> Cqrs<A, S>
where
    A: Aggregate,
    A::Services: Default,
    S: EventStore,
{
    /// A pipeline on `store`, with default services, retry and snapshot policies.
    pub fn new(store: S) -> Self {
        Self::with_services(store, A::Services::default())
    }
}

impl<A, S> Cqrs<A, S>
where
    A: Aggregate,
    S: EventStore,
{
    /// A pipeline on `store` whose handlers consult `services`.
    pub fn with_services(store: S, services: A::Services) -> Self {
        Self::from_arc(Arc::new(store), services)
    }
}

impl<A, S> Cqrs<A, S>
where
    A: Aggregate,
    S: EventStore + ?Sized,
{
    /// A pipeline on a shared store (for example an `Arc<dyn EventStore>`).
    pub fn from_arc(store: Arc<S>, services: A::Services) -> Self {
        Self {
            store,
            services: Arc::new(services),
            retry: RetryPolicy::default(),
            snapshots: A::snapshot_policy(),
            local: None,
        }
    }

    /// Keeps the state of up to `capacity` recently used aggregates in this process, and
    /// runs the commands of one aggregate one after the other instead of letting them
    /// race.
    ///
    /// A command on a cached aggregate skips the load: it costs the append alone. The
    /// cache cannot serve stale state: if another process wrote in the meantime, the
    /// append's expected-version check fails, the entry is dropped and the command is
    /// retried on freshly loaded state. Clones of this pipeline share the cache.
    #[must_use]
    pub fn with_cache(mut self, capacity: usize) -> Self {
        self.local = Some(Arc::new(Local {
            cache: StateCache::new(capacity),
            locks: KeyedLocks::default(),
        }));
        self
    }

    /// Replaces the retry policy.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Replaces the snapshot policy (which defaults to the aggregate's own).
    #[must_use]
    pub fn with_snapshots(mut self, snapshots: SnapshotPolicy) -> Self {
        self.snapshots = snapshots;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The services handed to `handle`.
    pub fn services(&self) -> &A::Services {
        &self.services
    }

    /// Executes a command on the aggregate `id`.
    ///
    /// # Errors
    ///
    /// [`CommandError::Rejected`] when the aggregate refuses, [`CommandError::Conflict`]
    /// when retries ran out, [`CommandError::Store`] when the store fails. In each case
    /// nothing was written.
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        self.execute_with(id, command, CommandMetadata::default())
            .await
    }

    /// Executes a command that carries its aggregate id (see [`Command::aggregate_id`]).
    ///
    /// # Errors
    ///
    /// [`CommandError::MissingAggregateId`] when the command carries none; otherwise as
    /// [`execute`](Self::execute).
    pub async fn dispatch(
        &self,
        command: A::Command,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        self.dispatch_with(command, CommandMetadata::default())
            .await
    }

    /// [`dispatch`](Self::dispatch) with metadata.
    ///
    /// # Errors
    ///
    /// As for [`dispatch`](Self::dispatch).
    pub async fn dispatch_with(
        &self,
        command: A::Command,
        metadata: CommandMetadata,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        let Some(id) = command.aggregate_id().map(str::to_owned) else {
            return Err(CommandError::MissingAggregateId {
                command: command.name(),
            });
        };
        self.execute_with(&id, command, metadata).await
    }

    /// Executes a command with metadata: an idempotency key, a correlation id, headers.
    ///
    /// With a command id that was already executed, nothing is appended and the original
    /// outcome is returned with `duplicate: true`.
    ///
    /// # Errors
    ///
    /// As for [`execute`](Self::execute).
    pub async fn execute_with(
        &self,
        id: &str,
        command: A::Command,
        metadata: CommandMetadata,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        let span = tracing::debug_span!(
            "cqrs.execute",
            aggregate_type = A::TYPE,
            aggregate_id = %id,
            command = command.name(),
            stream_version = field::Empty,
            retries = field::Empty,
        );
        self.run(id, &command, metadata).instrument(span).await
    }

    async fn run(
        &self,
        id: &str,
        command: &A::Command,
        metadata: CommandMetadata,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        let idempotency_key = metadata.command_id;
        let command_id = idempotency_key.unwrap_or_else(Uuid::new_v4);
        let correlation_id = metadata.correlation_id.unwrap_or_else(Uuid::new_v4);
        let event_metadata = Metadata {
            correlation_id: Some(correlation_id),
            causation_id: Some(command_id),
            command_id: Some(command_id),
            headers: metadata.headers,
        };
        let _queue = match &self.local {
            Some(local) => Some(local.locks.lock(id).await),
            None => None,
        };
        let mut retries = 0;
        loop {
            let loaded = match self.local.as_ref().and_then(|local| local.cache.take(id)) {
                Some((state, version)) => Loaded { state, version },
                None => self.load(id).await?,
            };
            let events = match loaded.state.handle_command(command, &self.services).await {
                Ok(events) => events,
                Err(rejection) => {
                    self.keep(id, loaded.state, loaded.version);
                    if let Some(key) = idempotency_key
                        && let Some(original) = self.store.find_command(key).await?
                    {
                        return self
                            .duplicate(id, original, command_id, correlation_id)
                            .await;
                    }
                    debug!(error = %rejection, "command rejected");
                    return Err(CommandError::Rejected(rejection));
                }
            };
            if events.is_empty() {
                self.keep(id, loaded.state, loaded.version);
                if let Some(key) = idempotency_key
                    && let Some(original) = self.store.find_command(key).await?
                {
                    return self
                        .duplicate(id, original, command_id, correlation_id)
                        .await;
                }
                return Ok(CommandOutcome {
                    stream_version: loaded.version,
                    events,
                    position: None,
                    command_id,
                    correlation_id,
                    duplicate: false,
                    retries,
                });
            }
            let new_events = events
                .iter()
                .map(|event| NewEvent::from_event(event, event_metadata.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            let mut request = AppendRequest::new(A::TYPE, id, loaded.version, new_events);
            request.command_id = idempotency_key;
            let span = tracing::debug_span!(
                "cqrs.append",
                aggregate_type = A::TYPE,
                aggregate_id = %id,
                expected_version = loaded.version,
                events = events.len(),
            );
            match self.store.append(request).instrument(span).await {
                Ok(outcome) if outcome.duplicate => {
                    return self
                        .duplicate(id, outcome, command_id, correlation_id)
                        .await;
                }
                Ok(outcome) => {
                    let span = tracing::Span::current();
                    span.record("stream_version", outcome.stream_version);
                    span.record("retries", retries);
                    let snapshot_due = self
                        .snapshots
                        .is_due(loaded.version, outcome.stream_version);
                    if snapshot_due || self.local.is_some() {
                        let mut state = loaded.state;
                        for event in &events {
                            state.apply_event(event);
                        }
                        if snapshot_due {
                            self.snapshot_in_background(id, &state, outcome.stream_version);
                        }
                        self.keep(id, state, outcome.stream_version);
                    }
                    return Ok(CommandOutcome {
                        stream_version: outcome.stream_version,
                        events,
                        position: Some(outcome.position),
                        command_id,
                        correlation_id,
                        duplicate: false,
                        retries,
                    });
                }
                Err(Error::Conflict { .. }) if retries < self.retry.max_retries => {
                    debug!(retry = retries + 1, "concurrency conflict, retrying");
                    tokio::time::sleep(self.retry.delay(retries)).await;
                    retries += 1;
                }
                Err(Error::Conflict { .. }) => {
                    warn!(
                        attempts = retries + 1,
                        "concurrency conflict, retries exhausted"
                    );
                    return Err(CommandError::Conflict {
                        aggregate_type: A::TYPE,
                        aggregate_id: id.to_owned(),
                        attempts: retries + 1,
                    });
                }
                Err(error) => return Err(CommandError::Store(error)),
            }
        }
    }

    /// Puts a state that is current at `version` into the cache, if there is one.
    fn keep(&self, id: &str, state: A, version: u64) {
        if let Some(local) = &self.local {
            local.cache.put(id, state, version);
        }
    }

    /// Rebuilds the outcome of a command id that was already appended.
    async fn duplicate(
        &self,
        id: &str,
        original: AppendOutcome,
        command_id: Uuid,
        correlation_id: Uuid,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        debug!(
            stream_version = original.stream_version,
            "duplicate command id, nothing appended"
        );
        let from = original.first_version.saturating_sub(1);
        let events = self
            .store
            .load(A::TYPE, id, from)
            .await?
            .into_iter()
            .take_while(|raw| raw.stream_version <= original.stream_version)
            .map(|raw| raw.into_decoded::<A::Event>().map(|e| e.payload))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CommandOutcome {
            stream_version: original.stream_version,
            events,
            position: Some(original.position),
            command_id,
            correlation_id,
            duplicate: true,
            retries: 0,
        })
    }

    fn snapshot_in_background(&self, id: &str, state: &A, stream_version: u64) {
        let state = match serde_json::to_value(state) {
            Ok(state) => state,
            Err(error) => {
                warn!(%error, "aggregate state does not serialise; snapshot skipped");
                return;
            }
        };
        let snapshot = Snapshot {
            stream_type: A::TYPE.to_owned(),
            stream_id: id.to_owned(),
            stream_version,
            state_version: A::STATE_VERSION,
            state,
        };
        let store = Arc::clone(&self.store);
        let write = async move {
            if let Err(error) = store.save_snapshot(snapshot).await {
                warn!(%error, "snapshot write failed; the next load replays more events");
            }
        }
        .instrument(tracing::Span::current());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(write);
            }
            Err(_) => warn!("no tokio runtime to write the snapshot on; snapshot skipped"),
        }
    }

    /// Loads the current state of aggregate `id` (snapshot + tail).
    ///
    /// A snapshot whose state does not deserialise is ignored (with a warning) and the
    /// whole stream is replayed.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] for a stored event that does not decode, [`Error::Backend`] when
    /// the store fails.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, Error> {
        let span = tracing::debug_span!(
            "cqrs.load",
            aggregate_type = A::TYPE,
            aggregate_id = %id,
            stream_version = field::Empty,
            replayed = field::Empty,
        );
        self.load_state(id).instrument(span).await
    }

    async fn load_state(&self, id: &str) -> Result<Loaded<A>, Error> {
        let loaded = self
            .store
            .load_for_command(A::TYPE, id, A::STATE_VERSION)
            .await?;
        let (state, version, events) = match loaded
            .snapshot
            .filter(|snapshot| snapshot.state_version == A::STATE_VERSION)
        {
            None => (A::default(), 0, loaded.events),
            Some(snapshot) => match serde_json::from_value::<A>(snapshot.state) {
                Ok(state) => (state, snapshot.stream_version, loaded.events),
                Err(error) => {
                    warn!(%error, aggregate_id = %id, "snapshot does not deserialise; replaying the whole stream");
                    let events = self.store.load(A::TYPE, id, 0).await?;
                    (
                        A::default(),
                        0,
                        events.into_iter().map(ReplayEvent::from).collect(),
                    )
                }
            },
        };
        let replayed = events.len();
        let loaded = fold(id, state, version, events)?;
        let span = tracing::Span::current();
        span.record("stream_version", loaded.version);
        span.record("replayed", replayed);
        Ok(loaded)
    }
}

/// Folds stored events of aggregate `id` onto a state at `version`, checking that
/// versions are contiguous.
fn fold<A: Aggregate>(
    id: &str,
    mut state: A,
    mut version: u64,
    events: Vec<ReplayEvent>,
) -> Result<Loaded<A>, Error> {
    for raw in events {
        if raw.stream_version != version + 1 {
            return Err(Error::backend(format!(
                "stream `{}/{id}` jumps from version {version} to {}",
                A::TYPE,
                raw.stream_version
            )));
        }
        version = raw.stream_version;
        let event = raw.decode::<A::Event>(A::TYPE, id)?;
        state.apply_event(&event);
    }
    Ok(Loaded { state, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_stays_within_the_ceiling() {
        let policy =
            RetryPolicy::new(5).with_backoff(Duration::from_millis(1), Duration::from_millis(8));
        for retry in 0..40 {
            assert!(policy.delay(retry) <= Duration::from_millis(8));
        }
        assert_eq!(
            RetryPolicy::new(1)
                .with_backoff(Duration::ZERO, Duration::ZERO)
                .delay(3),
            Duration::ZERO
        );
    }

    #[test]
    fn snapshot_policy_fires_when_a_multiple_is_crossed() {
        let every = SnapshotPolicy::every(10);
        assert!(!every.is_due(0, 9));
        assert!(every.is_due(9, 10));
        assert!(every.is_due(8, 13));
        assert!(!every.is_due(10, 19));
        assert!(every.is_due(0, 25));
        assert!(!SnapshotPolicy::every(0).is_due(0, 1_000));
    }
}
