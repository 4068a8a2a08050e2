//! The in-memory projection runner: order, exactly-once, filtering, live tail,
//! read-your-writes waits and failing handlers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Ledger, LedgerCommand, LedgerEvent, fold};
use cqrs_core::memory::{MemoryEventStore, Projector};
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::testing::ProjectionFixture;
use cqrs_core::{
    Aggregate, Cqrs, EventEnvelope, EventFilter, EventStore, Position, Projection, ProjectionError,
    ReadYourWrites, Token,
};

/// Folds every ledger stream into its state, recording the positions it saw.
#[derive(Debug, Default)]
struct LedgerView {
    states: std::collections::BTreeMap<String, Ledger>,
    seen: Vec<Position>,
    fail_on_amount: Option<i64>,
    failures: Arc<AtomicU32>,
}

#[derive(Debug, thiserror::Error)]
#[error("refusing amount {0}")]
struct Refused(i64);

impl Projection for LedgerView {
    const NAME: &'static str = "ledger_view";
    type Event = LedgerEvent;
    type Context = ();
    type Error = Refused;

    fn filter() -> EventFilter {
        EventFilter::event_types(<LedgerEvent as cqrs_core::Event>::TYPES).and_stream_type("ledger")
    }

    async fn handle(
        &mut self,
        (): &mut (),
        event: &EventEnvelope<LedgerEvent>,
    ) -> Result<(), Refused> {
        if let LedgerEvent::Added { amount, .. } = event.payload
            && Some(amount) == self.fail_on_amount
            && self.failures.load(Ordering::SeqCst) > 0
        {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            return Err(Refused(amount));
        }
        self.states
            .entry(event.stream_id.clone())
            .or_default()
            .apply_event(&event.payload);
        self.seen.push(event.position);
        Ok(())
    }
}

fn add(amount: i64) -> LedgerCommand {
    LedgerCommand::Add {
        amount,
        tag: String::new(),
    }
}

#[tokio::test]
async fn catch_up_applies_every_event_once_in_log_order() {
    let store = MemoryEventStore::new();
    let cqrs = Cqrs::<Ledger, _>::new(store.clone());
    for i in 0..30 {
        cqrs.execute(&format!("l{}", i % 4), add(i))
            .await
            .expect("execute");
    }
    // Events of another stream type that the filter must skip.
    store
        .append(AppendRequest::new(
            "other",
            "x",
            0,
            vec![NewEvent::new("Added", 1, serde_json::json!({}))],
        ))
        .await
        .expect("append");
    let projector = Projector::new(store.clone(), LedgerView::default()).with_batch_size(7);
    let reached = projector.catch_up().await.expect("catch up");
    assert_eq!(reached, store.head().await.expect("head"));
    // A second catch-up applies nothing again.
    projector.catch_up().await.expect("catch up again");
    let (seen, states) = projector
        .read(|view| (view.seen.clone(), view.states.clone()))
        .await;
    assert_eq!(seen.len(), 30);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "log order");
    for (id, state) in &states {
        let events: Vec<LedgerEvent> = store
            .load("ledger", id, 0)
            .await
            .expect("load")
            .iter()
            .map(|raw| raw.decode::<LedgerEvent>().expect("decode").payload)
            .collect();
        assert_eq!(state, &fold(&events), "view of {id}");
    }
}

#[tokio::test]
async fn a_failing_handler_stops_at_the_event_and_the_retry_applies_it_once() {
    let store = MemoryEventStore::new();
    let cqrs = Cqrs::<Ledger, _>::new(store.clone());
    for amount in [1, 2, 13, 4] {
        cqrs.execute("l", add(amount)).await.expect("execute");
    }
    let failures = Arc::new(AtomicU32::new(1));
    let view = LedgerView {
        fail_on_amount: Some(13),
        failures: Arc::clone(&failures),
        ..LedgerView::default()
    };
    let projector = Projector::new(store.clone(), view);
    let error = projector
        .catch_up()
        .await
        .expect_err("the handler refuses 13");
    let log = store
        .read_all(Position::START, 10, &EventFilter::all())
        .await
        .expect("log");
    match error {
        ProjectionError::Handler {
            projection,
            position,
            ..
        } => {
            assert_eq!(projection, "ledger_view");
            assert_eq!(position, log[2].position, "the failing event is named");
        }
        other => panic!("expected a projection error, got {other:?}"),
    }
    assert_eq!(
        projector.checkpoint().await,
        log[1].position,
        "stopped just before it"
    );
    projector.catch_up().await.expect("the retry succeeds");
    projector
        .read(|view| {
            assert_eq!(
                view.seen,
                log.iter().map(|e| e.position).collect::<Vec<_>>()
            );
            assert_eq!(view.states["l"].total, 20);
        })
        .await;
}

#[tokio::test]
async fn a_spawned_projector_follows_the_log_and_serves_read_your_writes() {
    let store = MemoryEventStore::new();
    let cqrs = Arc::new(Cqrs::<Ledger, _>::new(store.clone()));
    let projector = Projector::new(store.clone(), LedgerView::default());
    let _task = projector.spawn();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..16 {
        let cqrs = Arc::clone(&cqrs);
        let projector = projector.clone();
        writers.spawn(async move {
            for round in 0..10 {
                let id = format!("w{writer}");
                let outcome = cqrs.execute(&id, add(round)).await.expect("execute");
                let token = outcome.position.expect("an event was recorded");
                projector
                    .wait_for::<LedgerView>(token, Duration::from_secs(5))
                    .await
                    .expect("the view catches up");
                let seen = projector
                    .read(|v| v.states.get(&id).map(|s| s.events))
                    .await;
                assert_eq!(
                    seen,
                    Some(outcome.stream_version),
                    "the view shows our own write"
                );
            }
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined.expect("writer panicked");
    }
    projector
        .wait_for::<LedgerView>(store.head().await.expect("head"), Duration::from_secs(5))
        .await
        .expect("wait");
    assert_eq!(projector.read(|v| v.seen.len()).await, 160);
}

#[tokio::test]
async fn waiting_for_a_position_not_yet_written_times_out_with_a_typed_error() {
    let store = MemoryEventStore::new();
    let projector = Projector::new(store, LedgerView::default());
    let future = Position::new(99, 99);
    match projector
        .wait_for::<LedgerView>(future, Duration::from_millis(50))
        .await
    {
        Err(ProjectionError::Timeout {
            projection,
            target,
            reached,
        }) => {
            assert_eq!(projection, "ledger_view");
            assert_eq!(target, future);
            assert_eq!(reached, Position::START);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn the_projection_fixture_projects_given_events() {
    let view = ProjectionFixture::new(LedgerView::default())
        .given(
            "ledger",
            "a",
            [LedgerEvent::Added {
                amount: 2,
                tag: String::new(),
            }],
        )
        .given(
            "ledger",
            "b",
            [LedgerEvent::Added {
                amount: 5,
                tag: String::new(),
            }],
        )
        .given("ledger", "a", [LedgerEvent::Multiplied { factor: 3 }])
        .given("elsewhere", "a", [LedgerEvent::Multiplied { factor: 100 }])
        .run()
        .await
        .expect("project");
    assert_eq!(view.states["a"].total, 6);
    assert_eq!(view.states["b"].total, 5);
    assert_eq!(view.seen.len(), 3, "the other stream type is filtered out");

    ProjectionFixture::new(LedgerView::default())
        .given(
            "ledger",
            "a",
            [LedgerEvent::Added {
                amount: 7,
                tag: String::new(),
            }],
        )
        .then(|view| assert_eq!(view.states["a"].total, 7))
        .await;
}

#[tokio::test]
async fn a_polling_projector_follows_a_store_without_notifications() {
    let store = MemoryEventStore::new();
    let cqrs = Cqrs::<Ledger, _>::new(store.clone());
    // Seen through `dyn EventStore`, the store offers no wake-ups: the projector polls.
    let any: Arc<dyn EventStore> = Arc::new(store.clone());
    let projector = Projector::polling(any, LedgerView::default(), Duration::from_millis(10));
    let _task = projector.spawn();
    let mut last = None;
    for i in 0..5 {
        last = cqrs.execute("p", add(i)).await.expect("execute").position;
    }
    projector
        .wait_for::<LedgerView>(last.expect("a position"), Duration::from_secs(5))
        .await
        .expect("the polling projector catches up");
    assert_eq!(projector.read(|v| v.states["p"].total).await, 10);
}

/// Another view, which the ledger projector does not run.
#[derive(Debug, Default)]
struct OtherView;

impl Projection for OtherView {
    const NAME: &'static str = "other_view";
    type Event = LedgerEvent;
    type Context = ();
    type Error = Refused;

    async fn handle(&mut self, (): &mut (), _: &EventEnvelope<LedgerEvent>) -> Result<(), Refused> {
        Ok(())
    }
}

#[tokio::test]
async fn waiting_on_a_view_the_projector_does_not_run_is_a_typed_error() {
    let store = MemoryEventStore::new();
    let cqrs = Cqrs::<Ledger, _>::new(store.clone());
    let projector = Projector::new(store.clone(), LedgerView::default());
    let outcome = cqrs.execute("l", add(1)).await.expect("execute");
    match projector
        .wait_for::<OtherView>(&outcome, Duration::from_secs(1))
        .await
    {
        Err(ProjectionError::Unknown { projection }) => assert_eq!(projection, "other_view"),
        other => panic!("expected Unknown, got {other:?}"),
    }
}

#[tokio::test]
async fn a_joined_token_waits_for_every_command_behind_it() {
    let store = MemoryEventStore::new();
    let cqrs = Cqrs::<Ledger, _>::new(store.clone());
    let projector = Projector::new(store.clone(), LedgerView::default());
    let mut outcomes = Vec::new();
    for (stream, amount) in [("a", 1), ("b", 2), ("a", 3), ("c", 4)] {
        outcomes.push(cqrs.execute(stream, add(amount)).await.expect("execute"));
    }
    let token: Token = outcomes.iter().collect();
    assert_eq!(
        Some(token.position()),
        outcomes.iter().filter_map(|o| o.position).max()
    );
    projector
        .wait_for::<LedgerView>(token, Duration::from_secs(1))
        .await
        .expect("wait");
    let totals = projector
        .read(|v| ["a", "b", "c"].map(|s| v.states.get(s).map(|l| l.total)))
        .await;
    assert_eq!(totals, [Some(4), Some(2), Some(4)]);
}
