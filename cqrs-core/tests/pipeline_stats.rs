//! A pipeline's counters under racing writers: every append either lands or is counted
//! as a conflict, refusals are counted, and clones share the counters.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Ledger, LedgerCommand};
use cqrs_core::memory::MemoryEventStore;
use cqrs_core::{CommandError, Cqrs, CqrsTuning, RetryPolicy};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_append_lands_or_is_counted_as_a_conflict() {
    let cqrs = Arc::new(
        Cqrs::<Ledger, _>::builder(MemoryEventStore::new())
            .retry(
                RetryPolicy::new(2)
                    .with_backoff(Duration::from_micros(20), Duration::from_micros(200)),
            )
            .tuning(CqrsTuning::default().cache(0))
            .build(),
    );
    let mut tasks = Vec::new();
    for t in 0..8 {
        let cqrs = Arc::clone(&cqrs);
        tasks.push(tokio::spawn(async move {
            let (mut landed, mut gave_up) = (0_u64, 0_u64);
            for i in 0..25 {
                let command = LedgerCommand::Add {
                    amount: 2,
                    tag: format!("{t}-{i}"),
                };
                match cqrs.execute("hot", command).await {
                    Ok(_) => landed += 1,
                    Err(CommandError::Conflict { .. }) => gave_up += 1,
                    Err(other) => panic!("{other}"),
                }
            }
            (landed, gave_up)
        }));
    }
    let (mut landed, mut gave_up) = (0, 0);
    for task in tasks {
        let (l, g) = task.await.expect("task");
        landed += l;
        gave_up += g;
    }
    // A clone counts into the same figures: one refusal (a factor out of range).
    let clone = (*cqrs).clone();
    let refused = clone
        .execute("hot", LedgerCommand::Multiply { factor: 9 })
        .await;
    assert!(matches!(refused, Err(CommandError::Rejected(_))));

    let stats = cqrs.stats();
    assert_eq!(stats.aggregate_type, "ledger");
    assert_eq!(stats.commands, 8 * 25 + 1);
    assert_eq!(stats.rejected, 1);
    assert_eq!(
        stats.appends,
        landed + stats.conflicts,
        "each append landed or met a conflict ({landed} landed, {gave_up} gave up)"
    );
    assert!(
        stats.conflicts >= gave_up * 3,
        "a command gives up after three conflicts"
    );
    let counted = stats.append_buckets.last().map_or(0, |(_, n)| *n);
    assert!(counted <= stats.appends && stats.append_seconds_sum > 0.0);
    let cumulative: Vec<u64> = stats.append_buckets.iter().map(|(_, n)| *n).collect();
    assert!(
        cumulative.windows(2).all(|w| w[0] <= w[1]),
        "{cumulative:?}"
    );
}
