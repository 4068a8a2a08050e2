//! Commands over two aggregates: both loaded, one pure decision, both streams appended as
//! one atomic unit, retried on a conflict on either; a transfer conserves money under
//! concurrent writers.

mod common;

use std::sync::Arc;

use common::{Ledger, LedgerCommand, LedgerEvent};
use cqrs_core::memory::MemoryEventStore;
use cqrs_core::{CommandError, CommandMetadata, Cqrs, Error, EventStore, RetryPolicy};

fn added(amount: i64) -> LedgerEvent {
    LedgerEvent::Added {
        amount,
        tag: String::new(),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("insufficient funds: {0}")]
struct Insufficient(i64);

/// Moves `amount` from the first ledger to the second, refusing to go below zero.
fn transfer(
    amount: i64,
) -> impl Fn(&Ledger, &Ledger) -> Result<(Vec<LedgerEvent>, Vec<LedgerEvent>), Insufficient> {
    move |from, _to| {
        if from.total < amount {
            return Err(Insufficient(from.total));
        }
        Ok((vec![added(-amount)], vec![added(amount)]))
    }
}

async fn balance(store: &MemoryEventStore, id: &str) -> i64 {
    let events = store.load("ledger", id, 0).await.expect("load");
    events
        .iter()
        .map(|e| e.payload["amount"].as_i64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_conserve_money_and_never_overdraw() {
    let store = MemoryEventStore::new();
    let ledgers = Arc::new(
        Cqrs::<Ledger, _>::builder(store.clone())
            .retry(RetryPolicy::new(1_000))
            .build(),
    );
    let accounts: Vec<String> = (0..6).map(|i| format!("acct-{i}")).collect();
    for account in &accounts {
        ledgers
            .execute(
                account,
                LedgerCommand::Add {
                    amount: 100,
                    tag: String::new(),
                },
            )
            .await
            .expect("fund");
    }
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..12_usize {
        let (ledgers, accounts) = (Arc::clone(&ledgers), accounts.clone());
        tasks.spawn(async move {
            let (mut done, mut refused) = (0, 0);
            for n in 0..25_usize {
                let from = &accounts[(t + n) % accounts.len()];
                let to = &accounts[(t * 7 + n * 3 + 1) % accounts.len()];
                if from == to {
                    continue;
                }
                let amount = i64::try_from(5 + (t * n) % 40).unwrap_or(5);
                match ledgers
                    .execute_across(
                        from,
                        &ledgers,
                        to,
                        CommandMetadata::default(),
                        transfer(amount),
                    )
                    .await
                {
                    Ok((debit, credit)) => {
                        assert_eq!(debit.events.len(), 1);
                        assert_eq!(credit.events.len(), 1);
                        done += 1;
                    }
                    Err(CommandError::Rejected(Insufficient(_))) => refused += 1,
                    Err(other) => panic!("transfer failed: {other:?}"),
                }
            }
            (done, refused)
        });
    }
    let (mut done, mut refused) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let (d, r) = joined.expect("task");
        done += d;
        refused += r;
    }
    let mut total = 0;
    for account in &accounts {
        let balance = balance(&store, account).await;
        assert!(balance >= 0, "{account} overdrawn: {balance}");
        total += balance;
    }
    assert_eq!(
        total, 600,
        "money is conserved ({done} transfers, {refused} refused)"
    );
    assert!(done > 0);
}

#[tokio::test]
async fn a_refused_transfer_writes_nothing_and_a_repeated_one_is_a_duplicate() {
    let store = MemoryEventStore::new();
    let ledgers = Cqrs::<Ledger, _>::new(store.clone());
    ledgers
        .execute(
            "a",
            LedgerCommand::Add {
                amount: 10,
                tag: String::new(),
            },
        )
        .await
        .expect("fund");
    let refused = ledgers
        .execute_across("a", &ledgers, "b", CommandMetadata::default(), transfer(50))
        .await;
    assert!(
        matches!(refused, Err(CommandError::Rejected(Insufficient(10)))),
        "{refused:?}"
    );
    assert_eq!(
        store.head().await.expect("head").sequence(),
        1,
        "nothing written"
    );

    let metadata = CommandMetadata::default().with_command_id(uuid::Uuid::new_v4());
    let (debit, credit) = ledgers
        .execute_across("a", &ledgers, "b", metadata.clone(), transfer(4))
        .await
        .expect("transfer");
    assert!(!debit.duplicate && !credit.duplicate);
    let (again_debit, again_credit) = ledgers
        .execute_across("a", &ledgers, "b", metadata, transfer(4))
        .await
        .expect("the same transfer again");
    assert!(again_debit.duplicate && again_credit.duplicate);
    assert_eq!(again_debit.position, debit.position);
    assert_eq!(again_credit.events, credit.events, "the original events");
    assert_eq!(
        (balance(&store, "a").await, balance(&store, "b").await),
        (6, 4)
    );

    // The same aggregate on both sides is a bad request, not a transfer.
    let same = ledgers
        .execute_across("a", &ledgers, "a", CommandMetadata::default(), transfer(1))
        .await;
    assert!(
        matches!(same, Err(CommandError::Store(Error::InvalidAppend { .. }))),
        "{same:?}"
    );
}

#[tokio::test]
async fn the_conflicting_aggregate_is_named_when_retries_run_out() {
    let store = MemoryEventStore::new();
    let ledgers = Arc::new(
        Cqrs::<Ledger, _>::builder(store.clone())
            .retry(RetryPolicy::never())
            .build(),
    );
    let writer = Cqrs::<Ledger, _>::new(store.clone());
    writer
        .execute(
            "x",
            LedgerCommand::Add {
                amount: 10,
                tag: String::new(),
            },
        )
        .await
        .expect("fund");
    // The decision runs, then another writer changes `y` before the unit is appended.
    let interloper = writer;
    let result = ledgers
        .execute_across(
            "x",
            &ledgers,
            "y",
            CommandMetadata::default(),
            |from: &Ledger, _to: &Ledger| {
                let interloper = &interloper;
                futures_lite_block_on(async move {
                    interloper
                        .execute(
                            "y",
                            LedgerCommand::Add {
                                amount: 2,
                                tag: String::new(),
                            },
                        )
                        .await
                        .expect("interloper");
                });
                Ok::<_, Insufficient>((vec![added(-1)], vec![added(from.total.min(1))]))
            },
        )
        .await;
    match result {
        Err(CommandError::Conflict {
            aggregate_id,
            attempts,
            ..
        }) => {
            assert_eq!((aggregate_id.as_str(), attempts), ("y", 1));
        }
        other => panic!("expected a conflict naming y, got {other:?}"),
    }
    assert_eq!(
        balance(&store, "x").await,
        10,
        "nothing of the unit written"
    );
}

/// Runs `future` to completion from inside a synchronous closure, on a thread of its own.
fn futures_lite_block_on<F: std::future::Future<Output = ()> + Send>(future: F) {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime")
                    .block_on(future);
            })
            .join()
            .expect("interloper thread");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_over_many_aggregates_conserve_money_under_concurrency() {
    let store = MemoryEventStore::new();
    let ledgers = Arc::new(
        Cqrs::<Ledger, _>::builder(store.clone())
            .retry(RetryPolicy::new(1_000))
            .build(),
    );
    let accounts = ["m-0", "m-1", "m-2", "m-3"];
    for account in accounts {
        ledgers
            .execute(
                account,
                LedgerCommand::Add {
                    amount: 90,
                    tag: String::new(),
                },
            )
            .await
            .expect("fund");
    }
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8_usize {
        let ledgers = Arc::clone(&ledgers);
        tasks.spawn(async move {
            for n in 0..15_usize {
                // Take 3 from one account and give 1 to each of the three others.
                let from = (t + n) % accounts.len();
                let ids: Vec<&str> = (0..accounts.len())
                    .map(|i| accounts[(from + i) % accounts.len()])
                    .collect();
                let outcome = ledgers
                    .execute_many(&ids, CommandMetadata::default(), |states| {
                        if states[0].total < 3 {
                            return Err(Insufficient(states[0].total));
                        }
                        Ok(vec![
                            vec![added(-3)],
                            vec![added(1)],
                            vec![added(1)],
                            vec![added(1)],
                        ])
                    })
                    .await;
                match outcome {
                    Ok(outcomes) => assert_eq!(outcomes.len(), 4),
                    Err(CommandError::Rejected(_)) => {}
                    Err(other) => panic!("unexpected: {other:?}"),
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task");
    }
    let mut total = 0;
    for account in accounts {
        let balance = balance(&store, account).await;
        assert!(balance >= 0);
        total += balance;
    }
    assert_eq!(total, 360, "money is conserved");
}

#[tokio::test]
async fn a_decision_over_many_must_name_each_aggregate_once() {
    let store = MemoryEventStore::new();
    let ledgers = Cqrs::<Ledger, _>::new(store.clone());
    let wrong = ledgers
        .execute_many(&["p", "q"], CommandMetadata::default(), |_| {
            Ok::<_, Insufficient>(vec![vec![added(1)]])
        })
        .await;
    assert!(
        matches!(wrong, Err(CommandError::Store(Error::InvalidAppend { .. }))),
        "{wrong:?}"
    );
    let twice = ledgers
        .execute_many(&["p", "p"], CommandMetadata::default(), |_| {
            Ok::<_, Insufficient>(vec![vec![added(1)], vec![added(1)]])
        })
        .await;
    assert!(
        matches!(twice, Err(CommandError::Store(Error::InvalidAppend { .. }))),
        "{twice:?}"
    );
    assert_eq!(
        store.head().await.expect("head").sequence(),
        0,
        "nothing written"
    );

    let metadata = CommandMetadata::default().with_command_id(uuid::Uuid::new_v4());
    let decide =
        |_: &[&Ledger]| Ok::<_, Insufficient>(vec![vec![added(2)], vec![], vec![added(3)]]);
    let first = ledgers
        .execute_many(&["p", "q", "r"], metadata.clone(), decide)
        .await
        .expect("first");
    assert_eq!(first[1].position, None, "q records nothing");
    let again = ledgers
        .execute_many(&["p", "q", "r"], metadata, decide)
        .await
        .expect("again");
    assert!(again[0].duplicate && again[2].duplicate);
    assert_eq!(again[2].position, first[2].position);
    assert_eq!(
        (balance(&store, "p").await, balance(&store, "r").await),
        (2, 3)
    );
}
