//! Many tasks racing commands on one aggregate: no lost update, every conflict retried
//! or reported.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Ledger, LedgerCommand, LedgerEvent, fold};
use cqrs_core::memory::MemoryEventStore;
use cqrs_core::{CommandError, Cqrs, CqrsTuning, EventStore, RetryPolicy};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_tasks_racing_on_one_aggregate_lose_no_update() {
    let store = MemoryEventStore::new();
    // A small retry budget so that some commands do run out of retries: those must be
    // reported as conflicts and must not have written anything. Without the cache, which
    // would queue the commands of one aggregate instead of letting them race.
    let cqrs = Arc::new(
        Cqrs::<Ledger, _>::builder(store.clone())
            .retry(
                RetryPolicy::new(3)
                    .with_backoff(Duration::from_micros(50), Duration::from_millis(2)),
            )
            .tuning(CqrsTuning::default().cache(0))
            .build(),
    );
    cqrs.execute(
        "hot",
        LedgerCommand::Add {
            amount: 1,
            tag: "seed".to_owned(),
        },
    )
    .await
    .expect("seed command");

    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let cqrs = Arc::clone(&cqrs);
        tasks.spawn(async move {
            let mut succeeded = Vec::new();
            let (mut exhausted, mut retries) = (0_u32, 0_u32);
            for round in 0..25 {
                let tag = format!("t{task}-r{round}");
                let command = LedgerCommand::Add {
                    amount: i64::from(task * 100 + round),
                    tag: tag.clone(),
                };
                match cqrs.execute("hot", command).await {
                    Ok(outcome) => {
                        retries += outcome.retries;
                        assert_eq!(outcome.events.len(), 1);
                        succeeded.push(tag);
                    }
                    Err(CommandError::Conflict { attempts, .. }) => {
                        assert_eq!(attempts, 4, "a conflict is reported after the last retry");
                        exhausted += 1;
                    }
                    Err(other) => panic!("unexpected error: {other:?}"),
                }
            }
            (succeeded, exhausted, retries)
        });
    }

    let mut succeeded = Vec::new();
    let (mut exhausted, mut retries) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let (tags, task_exhausted, task_retries) = joined.expect("task panicked");
        succeeded.extend(tags);
        exhausted += task_exhausted;
        retries += task_retries;
    }
    assert_eq!(
        succeeded.len() + exhausted as usize,
        16 * 25,
        "every command is accounted for"
    );
    assert!(
        retries > 0,
        "16 racing tasks must have hit conflicts and retried"
    );

    let stored = store.load("ledger", "hot", 0).await.expect("load");
    let versions: Vec<u64> = stored.iter().map(|e| e.stream_version).collect();
    assert_eq!(
        versions,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "contiguous versions"
    );
    assert_eq!(
        stored.len(),
        succeeded.len() + 1,
        "one event per successful command"
    );

    let events: Vec<LedgerEvent> = stored
        .iter()
        .map(|raw| raw.decode::<LedgerEvent>().expect("decode").payload)
        .collect();
    let state = cqrs.load("hot").await.expect("load state").state;
    assert_eq!(
        state,
        fold(&events),
        "state equals the fold of the stored events"
    );

    let mut stored_tags = state.tags.clone();
    stored_tags.retain(|tag| tag != "seed");
    stored_tags.sort();
    succeeded.sort();
    assert_eq!(
        stored_tags, succeeded,
        "exactly the successful commands were applied, once each"
    );
}
