//! Commands over two aggregates on PostgreSQL: a limit kept by one aggregate while others
//! record what it limits, decided on both states and appended as one unit, holds under
//! concurrent writers (reading a view to decide would let writers through the limit).

mod common;

use std::sync::Arc;

use common::TestStore;
use common::counter::{Added, Counter};
use cqrs_core::{CommandError, CommandMetadata, Cqrs, EventStore, RetryPolicy};

const LIMIT: u64 = 40;

#[derive(Debug, thiserror::Error)]
#[error("the limit of {LIMIT} is reached")]
struct Full;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_over_two_aggregates_holds_under_concurrent_writers() {
    let t = TestStore::with_pool_size("across", 16).await;
    let counters = Arc::new(
        Cqrs::<Counter, _>::builder(t.store.clone())
            .retry(RetryPolicy::new(10_000))
            .build(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let counters = Arc::clone(&counters);
        tasks.spawn(async move {
            let (mut granted, mut refused) = (0_u64, 0_u64);
            for _ in 0..8 {
                // The `pool` counter grants at most LIMIT units; each writer's own counter
                // records what it was granted.
                let result = counters
                    .execute_across(
                        "pool",
                        &counters,
                        &format!("holder-{w}"),
                        CommandMetadata::default(),
                        |pool: &Counter, _holder: &Counter| {
                            if pool.total >= LIMIT {
                                return Err(Full);
                            }
                            Ok((vec![Added { amount: 1 }], vec![Added { amount: 1 }]))
                        },
                    )
                    .await;
                match result {
                    Ok(_) => granted += 1,
                    Err(CommandError::Rejected(Full)) => refused += 1,
                    Err(other) => panic!("unexpected: {other:?}"),
                }
            }
            (granted, refused)
        });
    }
    let (mut granted, mut refused) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let (g, r) = joined.expect("writer");
        granted += g;
        refused += r;
    }
    assert_eq!(
        (granted, refused),
        (LIMIT, 64 - LIMIT),
        "(granted, refused)"
    );
    let pool = t.store.load("counter", "pool", 0).await.expect("load");
    assert_eq!(pool.len() as u64, LIMIT, "the limit held");
    let mut held = 0;
    for w in 0..8 {
        let events = t
            .store
            .load("counter", &format!("holder-{w}"), 0)
            .await
            .expect("load");
        held += events.len() as u64;
        // Each grant's two events share a commit.
        for event in &events {
            assert!(
                pool.iter()
                    .any(|p| p.position.commit() == event.position.commit()),
                "a holder's event without its pool event"
            );
        }
    }
    assert_eq!(held, LIMIT, "every grant recorded on both sides");
    t.cleanup().await;
}
