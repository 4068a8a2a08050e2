//! The command pipeline: outcomes, refusals, idempotency, metadata flow, retries.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use common::{Ledger, LedgerCommand, LedgerError, LedgerEvent};
use cqrs_core::memory::MemoryEventStore;
use cqrs_core::store::{AppendOutcome, AppendRequest, RecordedEvent, Snapshot};
use cqrs_core::{
    CommandError, CommandMetadata, Cqrs, Error, EventFilter, EventStore, Position, RetryPolicy,
};
use uuid::Uuid;

fn add(amount: i64) -> LedgerCommand {
    LedgerCommand::Add {
        amount,
        tag: String::new(),
    }
}

async fn log(store: &MemoryEventStore) -> Vec<RecordedEvent> {
    store
        .read_all(Position::START, 10_000, &EventFilter::all())
        .await
        .expect("read_all")
}

#[tokio::test]
async fn outcome_reports_version_events_and_a_position_token() {
    let store = MemoryEventStore::new();
    let cqrs = Cqrs::<Ledger, _>::new(store.clone());
    let first = cqrs.execute("l", add(2)).await.expect("execute");
    assert_eq!(first.stream_version, 1);
    let second = cqrs
        .execute(
            "l",
            LedgerCommand::AddThenMultiply {
                amount: 1,
                factor: 3,
            },
        )
        .await
        .expect("execute");
    assert_eq!(second.stream_version, 3);
    assert_eq!(
        second.events,
        vec![
            LedgerEvent::Added {
                amount: 1,
                tag: String::new()
            },
            LedgerEvent::Multiplied { factor: 3 }
        ]
    );
    let stored = log(&store).await;
    assert_eq!(second.position, stored.last().map(|e| e.position));
    assert!(first.position < second.position);
    assert_eq!(cqrs.load("l").await.expect("load").state.total, 9);
}

#[tokio::test]
async fn a_refused_command_writes_nothing() {
    let store = MemoryEventStore::new();
    let cqrs = Cqrs::<Ledger, _>::new(store.clone());
    cqrs.execute("l", add(1)).await.expect("execute");
    let error = cqrs
        .execute("l", LedgerCommand::AddIfEven { amount: 4 })
        .await
        .expect_err("an odd total refuses");
    assert!(
        matches!(error, CommandError::Rejected(LedgerError::Odd)),
        "{error:?}"
    );
    assert_eq!(error.rejection(), Some(&LedgerError::Odd));
    assert_eq!(log(&store).await.len(), 1);
}

#[tokio::test]
async fn a_command_that_decides_nothing_appends_nothing() {
    let store = MemoryEventStore::new();
    let cqrs = Cqrs::<Ledger, _>::new(store.clone());
    cqrs.execute("l", add(1)).await.expect("execute");
    let outcome = cqrs
        .execute("l", LedgerCommand::Noop)
        .await
        .expect("execute");
    assert_eq!(outcome.stream_version, 1);
    assert!(outcome.events.is_empty());
    assert_eq!(outcome.position, None);
    assert_eq!(log(&store).await.len(), 1);
}

#[tokio::test]
async fn events_carry_correlation_causation_command_id_and_headers() {
    let store = MemoryEventStore::new();
    let cqrs = Cqrs::<Ledger, _>::new(store.clone());
    let command_id = Uuid::new_v4();
    let correlation_id = Uuid::new_v4();
    let outcome = cqrs
        .execute_with(
            "l",
            LedgerCommand::AddThenMultiply {
                amount: 1,
                factor: 2,
            },
            CommandMetadata::new()
                .with_command_id(command_id)
                .with_correlation_id(correlation_id)
                .with_header("user", "ada"),
        )
        .await
        .expect("execute");
    assert_eq!(
        (outcome.command_id, outcome.correlation_id),
        (command_id, correlation_id)
    );
    let stored = log(&store).await;
    assert_eq!(stored.len(), 2);
    for event in &stored {
        assert_eq!(event.metadata.correlation_id, Some(correlation_id));
        assert_eq!(event.metadata.causation_id, Some(command_id));
        assert_eq!(event.metadata.command_id, Some(command_id));
        assert_eq!(
            event.metadata.headers.get("user").map(String::as_str),
            Some("ada")
        );
    }
}

#[tokio::test]
async fn correlation_and_command_ids_are_generated_when_absent() {
    let store = MemoryEventStore::new();
    let cqrs = Cqrs::<Ledger, _>::new(store.clone());
    let a = cqrs.execute("l", add(1)).await.expect("execute");
    let b = cqrs.execute("l", add(1)).await.expect("execute");
    assert_ne!(a.correlation_id, b.correlation_id);
    assert_ne!(a.command_id, b.command_id);
    let stored = log(&store).await;
    assert_eq!(stored[0].metadata.correlation_id, Some(a.correlation_id));
    assert_eq!(stored[0].metadata.causation_id, Some(a.command_id));
}

#[tokio::test]
async fn a_reaction_to_an_event_keeps_the_correlation_and_is_idempotent() {
    let store = MemoryEventStore::new();
    let cqrs = Cqrs::<Ledger, _>::new(store.clone());
    let origin = cqrs.execute("source", add(1)).await.expect("execute");
    let cause = log(&store).await.remove(0);
    let first = cqrs
        .execute_with("reaction", add(5), CommandMetadata::caused_by(&cause))
        .await
        .expect("react");
    let again = cqrs
        .execute_with("reaction", add(5), CommandMetadata::caused_by(&cause))
        .await
        .expect("react again");
    assert_eq!(first.correlation_id, origin.correlation_id);
    assert!(!first.duplicate);
    assert!(again.duplicate, "reacting twice to one event appends once");
    assert_eq!(
        store
            .load("ledger", "reaction", 0)
            .await
            .expect("load")
            .len(),
        1
    );
}

#[tokio::test]
async fn a_repeated_command_id_appends_once_and_returns_the_original_outcome() {
    let store = MemoryEventStore::new();
    let cqrs = Cqrs::<Ledger, _>::new(store.clone());
    let key = CommandMetadata::new().with_command_id(Uuid::new_v4());
    let first = cqrs
        .execute_with(
            "l",
            LedgerCommand::AddThenMultiply {
                amount: 2,
                factor: 3,
            },
            key.clone(),
        )
        .await
        .expect("execute");
    cqrs.execute("l", add(1)).await.expect("another command");
    let repeat = cqrs
        .execute_with(
            "l",
            LedgerCommand::AddThenMultiply {
                amount: 2,
                factor: 3,
            },
            key,
        )
        .await
        .expect("repeat");
    assert!(repeat.duplicate);
    assert_eq!(repeat.stream_version, first.stream_version);
    assert_eq!(repeat.position, first.position);
    assert_eq!(repeat.events, first.events);
    assert_eq!(log(&store).await.len(), 3);
}

#[tokio::test]
async fn a_repeated_command_id_is_recognised_even_when_the_state_would_now_refuse_it() {
    let store = MemoryEventStore::new();
    let cqrs = Cqrs::<Ledger, _>::new(store.clone());
    let key = CommandMetadata::new().with_command_id(Uuid::new_v4());
    // Total 0 is even: accepted, and the total becomes odd.
    let first = cqrs
        .execute_with("l", LedgerCommand::AddIfEven { amount: 3 }, key.clone())
        .await
        .expect("execute");
    // The same request again (a client retry): the state would now refuse it, but it was
    // already applied, so the original outcome is the answer.
    let repeat = cqrs
        .execute_with("l", LedgerCommand::AddIfEven { amount: 3 }, key)
        .await
        .expect("repeat");
    assert!(repeat.duplicate);
    assert_eq!(repeat.events, first.events);
    assert_eq!(log(&store).await.len(), 1);
}

#[tokio::test]
async fn a_command_id_used_on_another_aggregate_is_refused_never_answered_with_its_events() {
    let store = MemoryEventStore::new();
    let cqrs = Cqrs::<Ledger, _>::new(store.clone());
    let id = Uuid::new_v4();
    let key = CommandMetadata::new().with_command_id(id);
    cqrs.execute_with("a", add(1), key.clone())
        .await
        .expect("the first use");
    let names_a = |result: Result<_, CommandError<_>>| {
        matches!(
            result,
            Err(CommandError::Store(Error::CommandIdInUse { command_id, ref stream_id, .. }))
                if command_id == id && stream_id == "a"
        )
    };
    // On another aggregate: an append that would be written, a command that changes
    // nothing, and one the aggregate refuses (both answered from the record otherwise).
    assert!(names_a(cqrs.execute_with("b", add(2), key.clone()).await));
    assert!(names_a(
        cqrs.execute_with("b", LedgerCommand::Noop, key.clone())
            .await
    ));
    assert!(names_a(
        cqrs.execute_with("b", LedgerCommand::Multiply { factor: 9 }, key)
            .await
    ));
    assert_eq!(log(&store).await.len(), 1, "nothing written to b");
}

#[tokio::test]
async fn dispatch_needs_an_aggregate_id() {
    let cqrs = Cqrs::<Ledger, _>::new(MemoryEventStore::new());
    let error = cqrs.dispatch(add(1)).await.expect_err("no id");
    assert!(
        matches!(error, CommandError::MissingAggregateId { command: "Add" }),
        "{error:?}"
    );
    assert_eq!(error.to_string(), "command `Add` carries no aggregate id");
}

/// A store that reports a conflict on the first `conflicts` appends, writing nothing.
struct Contended {
    inner: MemoryEventStore,
    conflicts: AtomicU32,
}

#[async_trait]
impl EventStore for Contended {
    async fn load(&self, t: &str, id: &str, after: u64) -> cqrs_core::Result<Vec<RecordedEvent>> {
        self.inner.load(t, id, after).await
    }
    async fn append(&self, request: AppendRequest) -> cqrs_core::Result<AppendOutcome> {
        if self
            .conflicts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::Conflict {
                stream_type: request.stream_type.into_owned(),
                stream_id: request.stream_id,
                expected: request.expected_version,
            });
        }
        self.inner.append(request).await
    }
    async fn find_command(
        &self,
        id: Uuid,
        stream_type: &str,
        stream_id: &str,
    ) -> cqrs_core::Result<Option<AppendOutcome>> {
        self.inner.find_command(id, stream_type, stream_id).await
    }
    async fn read_all(
        &self,
        after: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> cqrs_core::Result<Vec<RecordedEvent>> {
        self.inner.read_all(after, limit, filter).await
    }
    async fn head(&self) -> cqrs_core::Result<Position> {
        self.inner.head().await
    }
    async fn load_snapshot(&self, t: &str, id: &str) -> cqrs_core::Result<Option<Snapshot>> {
        self.inner.load_snapshot(t, id).await
    }
    async fn save_snapshot(&self, snapshot: Snapshot) -> cqrs_core::Result<()> {
        self.inner.save_snapshot(snapshot).await
    }
}

#[tokio::test]
async fn conflicts_are_retried_up_to_the_policy_then_reported() {
    let store = Arc::new(Contended {
        inner: MemoryEventStore::new(),
        conflicts: AtomicU32::new(3),
    });
    let cqrs = Cqrs::<Ledger, _>::builder(Arc::clone(&store))
        .retry(RetryPolicy::new(3))
        .build();
    let outcome = cqrs
        .execute("l", add(1))
        .await
        .expect("the fourth attempt lands");
    assert_eq!(outcome.retries, 3);
    assert_eq!(outcome.stream_version, 1);

    store.conflicts.store(4, Ordering::SeqCst);
    let error = cqrs
        .execute("l", add(1))
        .await
        .expect_err("retries run out");
    match error {
        CommandError::Conflict {
            aggregate_type,
            aggregate_id,
            attempts,
        } => {
            assert_eq!(
                (aggregate_type, aggregate_id.as_str(), attempts),
                ("ledger", "l", 4)
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.inner.len(), 1, "the failed command wrote nothing");

    store.conflicts.store(1, Ordering::SeqCst);
    let never = Cqrs::<Ledger, _>::builder(Arc::clone(&store))
        .retry(RetryPolicy::never())
        .build();
    assert!(matches!(
        never.execute("l", add(1)).await,
        Err(CommandError::Conflict { attempts: 1, .. })
    ));
}

#[tokio::test]
async fn a_stored_event_that_does_not_decode_is_a_typed_error() {
    let store = MemoryEventStore::new();
    store
        .append(AppendRequest::new(
            "ledger",
            "l",
            0,
            vec![cqrs_core::store::NewEvent::new(
                "Added",
                1,
                serde_json::json!({ "amount": "NaN" }),
            )],
        ))
        .await
        .expect("append");
    store
        .append(AppendRequest::new(
            "ledger",
            "m",
            0,
            vec![cqrs_core::store::NewEvent::new(
                "Vanished",
                1,
                serde_json::json!({}),
            )],
        ))
        .await
        .expect("append");
    let cqrs = Cqrs::<Ledger, _>::new(store);
    match cqrs.execute("l", add(1)).await {
        Err(CommandError::Store(Error::Decode {
            stream_id,
            stream_version,
            event_type,
            ..
        })) => {
            assert_eq!(
                (stream_id.as_str(), stream_version, event_type.as_str()),
                ("l", 1, "Added")
            );
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    match cqrs.load("m").await {
        Err(error @ Error::Decode { .. }) => {
            assert_eq!(
                error.to_string(),
                "cannot decode event `Vanished` v1 at version 1 of stream `ledger/m`"
            );
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Cqrs<Ledger, MemoryEventStore>>();
    send_sync::<Cqrs<Ledger, dyn EventStore>>();
    send_sync::<MemoryEventStore>();
    send_sync::<Error>();
    send_sync::<CommandError<LedgerError>>();
    send_sync::<cqrs_core::memory::Projector<NoopProjection>>();

    fn send<T: Send>(_: &T) {}
    let cqrs = Cqrs::<Ledger, _>::new(MemoryEventStore::new());
    send(&cqrs.execute("l", add(1)));
    let store = MemoryEventStore::new();
    send(&store.read_all(Position::START, 1, &EventFilter::all()));
}

#[derive(Debug, Default)]
struct NoopProjection;

impl cqrs_core::Projection for NoopProjection {
    const NAME: &'static str = "noop";
    type Event = LedgerEvent;
    type Context = ();
    type Error = std::convert::Infallible;
    async fn handle(
        &mut self,
        (): &mut (),
        _: &cqrs_core::EventEnvelope<LedgerEvent>,
    ) -> Result<(), std::convert::Infallible> {
        Ok(())
    }
}
