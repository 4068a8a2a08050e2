//! One command, from its metadata to its outcome.
//!
//! The handler's decision is read as one of three things: events to append, nothing to
//! record, or a refusal. Only the first writes; for the other two, a command id seen
//! before answers with the original outcome (a retried request after a success must
//! not be refused by the state it produced). An append that finds its command id
//! recorded answers the same way. A conflict runs the handler again on fresh state, as
//! the [`RetryPolicy`](super::RetryPolicy) allows.

use std::sync::Arc;
use tracing::{Instrument, debug, warn};
use uuid::Uuid;

use super::{CommandError, CommandOutcome, Cqrs, Loaded};
use crate::store::{AppendOutcome, AppendRequest, NewEvent, Snapshot};
use crate::{Aggregate, CommandMetadata, Error, EventStore, Metadata};

/// The ids a command runs under.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ids {
    /// The caller's idempotency key, if any.
    pub(super) key: Option<Uuid>,
    /// The caller's, or a generated one.
    pub(super) command: Uuid,
    pub(super) correlation: Uuid,
}

impl Ids {
    /// The ids of a command sent with `metadata`, and the metadata its events carry.
    pub(super) fn of(metadata: CommandMetadata) -> (Self, Metadata) {
        let ids = Self {
            key: metadata.command_id,
            command: metadata.command_id.unwrap_or_else(Uuid::new_v4),
            correlation: metadata.correlation_id.unwrap_or_else(Uuid::new_v4),
        };
        let event_metadata = Metadata {
            correlation_id: Some(ids.correlation),
            causation_id: Some(ids.command),
            command_id: Some(ids.command),
            headers: metadata.headers,
        };
        (ids, event_metadata)
    }
}

/// What the handler decided, as the pipeline acts on it.
enum Decision<E, R> {
    /// Events to append.
    Record(Vec<E>),
    /// Nothing changes.
    Nothing,
    /// The command is refused.
    Refuse(R),
}

impl<E, R> From<Result<Vec<E>, R>> for Decision<E, R> {
    fn from(handled: Result<Vec<E>, R>) -> Self {
        match handled {
            Ok(events) if events.is_empty() => Self::Nothing,
            Ok(events) => Self::Record(events),
            Err(refusal) => Self::Refuse(refusal),
        }
    }
}

type Outcome<A> =
    Result<CommandOutcome<<A as Aggregate>::Event>, CommandError<<A as Aggregate>::Error>>;

impl<A, S> Cqrs<A, S>
where
    A: Aggregate,
    S: EventStore + ?Sized,
{
    pub(super) async fn run(
        &self,
        id: &str,
        command: &A::Command,
        metadata: CommandMetadata,
    ) -> Outcome<A> {
        let (ids, event_metadata) = Ids::of(metadata);
        self.stats.command();
        // With the cache, the commands of one aggregate run one after the other.
        let _queue = match &self.local {
            Some(local) => Some(local.locks.lock(id).await),
            None => None,
        };
        let mut retries = 0;
        loop {
            let loaded = self.current(id).await?;
            let decision: Decision<A::Event, A::Error> = loaded
                .state
                .handle_command(command, &self.services)
                .await
                .into();
            let events = match decision {
                Decision::Record(events) => events,
                Decision::Nothing | Decision::Refuse(_) => {
                    self.keep(id, loaded.state, loaded.version);
                    if let Some(key) = ids.key
                        && let Some(original) = self.store.find_command(key, A::TYPE, id).await?
                    {
                        return Ok(self.duplicate(id, original, ids).await?);
                    }
                    return match decision {
                        Decision::Refuse(refusal) => {
                            self.stats.rejected();
                            debug!(error = %refusal, "command rejected");
                            Err(CommandError::Rejected(refusal))
                        }
                        _ => Ok(CommandOutcome {
                            stream_version: loaded.version,
                            events: Vec::new(),
                            position: None,
                            command_id: ids.command,
                            correlation_id: ids.correlation,
                            duplicate: false,
                            retries,
                        }),
                    };
                }
            };
            let request = AppendRequest {
                command_id: ids.key,
                ..AppendRequest::new(
                    A::TYPE,
                    id,
                    loaded.version,
                    events
                        .iter()
                        .map(|event| NewEvent::from_event(event, event_metadata.clone()))
                        .collect::<Result<Vec<_>, _>>()?,
                )
            };
            let span = tracing::debug_span!(
                "cqrs.append",
                aggregate_type = A::TYPE,
                aggregate_id = %id,
                expected_version = loaded.version,
                events = events.len(),
            );
            match self
                .counted(self.store.append(request).instrument(span))
                .await
            {
                Ok(outcome) if outcome.duplicate => {
                    return Ok(self.duplicate(id, outcome, ids).await?);
                }
                Ok(outcome) => return Ok(self.recorded(id, loaded, events, outcome, ids, retries)),
                Err(Error::Conflict { .. }) if retries < self.retry.max_retries() => {
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

    /// Awaits an append (or atomic unit), counting it, its time and a conflict in the
    /// pipeline's stats.
    pub(super) async fn counted<T>(
        &self,
        append: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let sent = std::time::Instant::now();
        let appended = append.await;
        self.stats.append(sent.elapsed());
        if matches!(appended, Err(Error::Conflict { .. })) {
            self.stats.conflict();
        }
        appended
    }

    /// After a conflict on `stream`: waits and counts a retry, or, retries spent,
    /// reports it and returns `false`.
    pub(super) async fn retried(&self, retries: &mut u32, stream: &str) -> bool {
        if *retries < self.retry.max_retries() {
            debug!(retry = *retries + 1, %stream, "concurrency conflict, retrying");
            tokio::time::sleep(self.retry.delay(*retries)).await;
            *retries += 1;
            return true;
        }
        warn!(
            attempts = *retries + 1,
            "concurrency conflict, retries exhausted"
        );
        false
    }

    /// The aggregate's current state: kept in this process, or loaded.
    pub(super) async fn current(&self, id: &str) -> Result<Loaded<A>, Error> {
        match self.local.as_ref().and_then(|local| local.cache.take(id)) {
            Some((state, version)) => Ok(Loaded { state, version }),
            None => self.load(id).await,
        }
    }

    /// The outcome of a command whose events were appended: the state they lead to is
    /// kept, and snapshotted when due.
    fn recorded(
        &self,
        id: &str,
        loaded: Loaded<A>,
        events: Vec<A::Event>,
        outcome: AppendOutcome,
        ids: Ids,
        retries: u32,
    ) -> CommandOutcome<A::Event> {
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
        CommandOutcome {
            stream_version: outcome.stream_version,
            events,
            position: Some(outcome.position),
            command_id: ids.command,
            correlation_id: ids.correlation,
            duplicate: false,
            retries,
        }
    }

    /// Puts a state that is current at `version` into the cache, if there is one.
    pub(super) fn keep(&self, id: &str, state: A, version: u64) {
        if let Some(local) = &self.local {
            local.cache.put(id, state, version);
        }
    }

    /// Rebuilds the outcome of a command id that was already appended.
    pub(super) async fn duplicate(
        &self,
        id: &str,
        original: AppendOutcome,
        ids: Ids,
    ) -> Result<CommandOutcome<A::Event>, Error> {
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
            command_id: ids.command,
            correlation_id: ids.correlation,
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
}

#[cfg(test)]
mod tests {
    use crate::SnapshotPolicy;

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
