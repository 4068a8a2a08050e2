//! w5: transfers, each a command over two accounts appended as one atomic unit.

use std::time::Instant;

use cqrs_core::{CommandMetadata, RetryPolicy};
use cqrs_postgres::PgEventStore;
use example_bank_account::{AccountError, AccountEvent, BankAccount};

use crate::{W1, deposit, open, per_second, percentile, pipeline};

/// 16 tasks, each with two accounts of its own, moving 1 back and forth `transfers`
/// times: each transfer loads both accounts, decides, and appends a withdrawal and a
/// deposit in one statement.
pub(crate) async fn w5(store: &PgEventStore, transfers: u64) -> anyhow::Result<W1> {
    let cqrs = pipeline(store, 0, RetryPolicy::default());
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let cqrs = cqrs.clone();
        tasks.spawn(async move {
            let (a, b) = (format!("w5a-{task}"), format!("w5b-{task}"));
            for id in [&a, &b] {
                cqrs.execute(id, open()).await?;
                cqrs.execute(id, deposit(10)).await?;
            }
            anyhow::Ok((cqrs, a, b))
        });
    }
    let mut pairs = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        pairs.push(joined??);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (cqrs, a, b) in pairs {
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(usize::try_from(transfers).unwrap_or(0));
            for n in 0..transfers {
                let (from, to) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
                let begun = Instant::now();
                cqrs.execute_across(
                    from,
                    &cqrs,
                    to,
                    CommandMetadata::default(),
                    |source: &BankAccount, _: &BankAccount| {
                        if source.balance < 1 {
                            return Err(AccountError::InsufficientFunds {
                                balance: source.balance,
                                requested: 1,
                            });
                        }
                        Ok((
                            vec![AccountEvent::Withdrawn { amount: 1 }],
                            vec![AccountEvent::Deposited { amount: 1 }],
                        ))
                    },
                )
                .await?;
                latencies.push(begun.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(W1 {
        rate: per_second(latencies.len() as u64, elapsed),
        p50: percentile(&latencies, 50),
        p99: percentile(&latencies, 99),
    })
}
