//! The in-process aggregate cache and per-aggregate command queue.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use common::{Ledger, LedgerCommand, LedgerEvent, fold};
use cqrs_core::memory::MemoryEventStore;
use cqrs_core::store::{AppendOutcome, AppendRequest, LoadedStream, RecordedEvent, Snapshot};
use cqrs_core::{CommandError, Cqrs, CqrsTuning, EventFilter, EventStore, Position, RetryPolicy};
use uuid::Uuid;

/// Counts the loads a pipeline makes.
#[derive(Default)]
struct Counting {
    inner: MemoryEventStore,
    loads: AtomicU32,
}

#[async_trait]
impl EventStore for Counting {
    async fn load(&self, t: &str, id: &str, after: u64) -> cqrs_core::Result<Vec<RecordedEvent>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(t, id, after).await
    }
    async fn load_for_command(
        &self,
        t: &str,
        id: &str,
        state_version: u32,
    ) -> cqrs_core::Result<LoadedStream> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load_for_command(t, id, state_version).await
    }
    async fn append(&self, request: AppendRequest) -> cqrs_core::Result<AppendOutcome> {
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

fn add(amount: i64) -> LedgerCommand {
    LedgerCommand::Add {
        amount,
        tag: String::new(),
    }
}

async fn stored_state(store: &MemoryEventStore, id: &str) -> Ledger {
    let events: Vec<LedgerEvent> = store
        .load("ledger", id, 0)
        .await
        .expect("load")
        .iter()
        .map(|raw| raw.decode::<LedgerEvent>().expect("decode").payload)
        .collect();
    fold(&events)
}

#[tokio::test]
async fn a_cached_aggregate_is_loaded_once() {
    let store = Arc::new(Counting::default());
    let cqrs = Cqrs::<Ledger, _>::builder(Arc::clone(&store))
        .tuning(CqrsTuning::default().cache(16))
        .build();
    for i in 0..10 {
        cqrs.execute("l", add(i)).await.expect("execute");
    }
    // Refused and no-op commands keep the cached state too.
    cqrs.execute("l", LedgerCommand::Multiply { factor: 9 })
        .await
        .expect_err("factor out of range");
    cqrs.execute("l", LedgerCommand::Noop).await.expect("noop");
    cqrs.execute("l", add(1)).await.expect("execute");
    assert_eq!(
        store.loads.load(Ordering::SeqCst),
        1,
        "only the first command loads"
    );
    // Decisions taken on the cached state are those the stored state dictates.
    for round in 0..6 {
        let stored = stored_state(&store.inner, "l").await;
        let decided = cqrs
            .execute("l", LedgerCommand::AddIfEven { amount: 1 })
            .await;
        assert_eq!(
            decided.is_ok(),
            stored.total % 2 == 0,
            "round {round}: the cached state decided otherwise than the stored one"
        );
        if round % 2 == 0 {
            cqrs.execute("l", add(3)).await.expect("execute");
        }
    }
    assert_eq!(
        store.loads.load(Ordering::SeqCst),
        1,
        "still served from the cache"
    );
    assert_eq!(
        cqrs.load("l").await.expect("load").state,
        stored_state(&store.inner, "l").await
    );
}

#[tokio::test]
async fn the_cache_is_bounded() {
    let store = Arc::new(Counting::default());
    let cqrs = Cqrs::<Ledger, _>::builder(Arc::clone(&store))
        .tuning(CqrsTuning::default().cache(2))
        .build();
    for id in ["a", "b", "c", "a"] {
        cqrs.execute(id, add(1)).await.expect("execute");
    }
    // "a" was evicted by "c", so it was loaded twice: 4 loads in all.
    assert_eq!(store.loads.load(Ordering::SeqCst), 4);
    cqrs.execute("c", add(1)).await.expect("execute");
    assert_eq!(store.loads.load(Ordering::SeqCst), 4, "c is still cached");
}

#[tokio::test]
async fn a_stale_cache_is_detected_by_the_append_and_reloaded() {
    let store = MemoryEventStore::new();
    // Two processes, each with its own cache, writing to the same aggregate.
    let first = Cqrs::<Ledger, _>::builder(store.clone())
        .tuning(CqrsTuning::default().cache(16))
        .build();
    let second = Cqrs::<Ledger, _>::builder(store.clone())
        .tuning(CqrsTuning::default().cache(16))
        .build();
    first.execute("l", add(2)).await.expect("first");
    second.execute("l", add(3)).await.expect("second");
    // `first` still caches version 1; its next command conflicts, reloads, and lands.
    let outcome = first
        .execute("l", LedgerCommand::Multiply { factor: 2 })
        .await
        .expect("retried on fresh state");
    assert_eq!(outcome.retries, 1);
    assert_eq!(outcome.stream_version, 3);
    let expected = stored_state(&store, "l").await;
    assert_eq!(
        expected.total, 10,
        "(2 + 3) * 2: nothing lost, nothing applied twice"
    );
    assert_eq!(first.load("l").await.expect("load").state, expected);
    // And the refreshed cache is right: one more command through each pipeline.
    first.execute("l", add(1)).await.expect("first again");
    second.execute("l", add(1)).await.expect("second again");
    assert_eq!(stored_state(&store, "l").await.total, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_commands_on_one_aggregate_queue_instead_of_conflicting() {
    let store = MemoryEventStore::new();
    let cqrs = Arc::new(
        Cqrs::<Ledger, _>::builder(store.clone())
            .tuning(CqrsTuning::default().cache(16))
            .retry(RetryPolicy::never())
            .build(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let cqrs = Arc::clone(&cqrs);
        tasks.spawn(async move {
            for round in 0..20 {
                cqrs.execute("hot", add(task * 100 + round)).await?;
            }
            Ok::<_, CommandError<common::LedgerError>>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined
            .expect("task panicked")
            .expect("no conflict without retries: commands queue");
    }
    let state = stored_state(&store, "hot").await;
    assert_eq!(state.events, 320);
    assert_eq!(cqrs.load("hot").await.expect("load").state, state);
}
