//! A tour of cqrs on a bank account: open accounts, move money, see a command refused,
//! watch concurrent writers conflict and the pipeline retry, send the same command twice
//! and have it applied once, then read a projection that waited for our own writes.
//!
//! Run it with:
//!
//! ```text
//! cargo run -p example-bank-account
//! ```
//!
//! It needs nothing else: events live in the in-memory store (amounts are in cents). Set `RUST_LOG=cqrs_core=debug`
//! to see the pipeline's own trace (conflicts, retries).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cqrs_core::memory::{MemoryEventStore, Projector};
use cqrs_core::{
    Aggregate, AppendRequest, CommandError, CommandMetadata, Cqrs, EventStore, Metadata, NewEvent,
};
use example_bank_account::{AccountCommand, AccountEvent, Balances, BankAccount};
use tracing_subscriber::EnvFilter;

fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("example_bank_account=debug")),
        )
        .init();

    // Every call to this store takes a millisecond, as a call across a network would;
    // that is what makes the concurrent writers below actually collide.
    let store = MemoryEventStore::with_latency(Duration::from_millis(1));
    println!("cqrs bank-account tour, on the in-memory store\n");

    let cqrs = Arc::new(Cqrs::<BankAccount, _>::new(store.clone()));
    let balances = Projector::new(store.clone(), Balances::default());
    let _live = balances.spawn(); // keeps the read model up to date in the background

    println!("1. Open two accounts");
    for (id, owner) in [("acc-ada", "Ada"), ("acc-bob", "Bob")] {
        let outcome = cqrs
            .execute(
                id,
                AccountCommand::Open {
                    owner: owner.to_owned(),
                },
            )
            .await?;
        println!(
            "   {id}: opened for {owner} (stream version {})",
            outcome.stream_version
        );
    }

    println!("\n2. Move money");
    let moves = [
        ("acc-ada", AccountCommand::Deposit { amount: 100_00 }),
        ("acc-bob", AccountCommand::Deposit { amount: 20_00 }),
        ("acc-ada", AccountCommand::Withdraw { amount: 35_50 }),
    ];
    for (id, command) in moves {
        let label = describe(&command);
        let outcome = cqrs.execute(id, command).await?;
        println!(
            "   {id}: {label:<16} -> recorded {:?} at version {}",
            outcome.events, outcome.stream_version
        );
    }

    println!("\n3. A command the account refuses");
    match cqrs
        .execute("acc-bob", AccountCommand::Withdraw { amount: 500_00 })
        .await
    {
        Err(CommandError::Rejected(reason)) => {
            println!("   acc-bob: withdraw 500.00 refused: {reason}; nothing was written");
        }
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    }

    println!("\n4. Two writers, one stream: optimistic concurrency");
    let seen = cqrs.load("acc-ada").await?;
    println!("   clerk A reads acc-ada at version {}", seen.version);
    cqrs.execute("acc-ada", AccountCommand::Deposit { amount: 1_00 })
        .await?;
    println!(
        "   clerk B deposits 1.00 meanwhile (acc-ada is now at version {})",
        seen.version + 1
    );
    let stale = NewEvent::from_event(
        &AccountEvent::Deposited { amount: 2_00 },
        Metadata::default(),
    )?;
    let attempt = store
        .append(AppendRequest::new(
            BankAccount::TYPE,
            "acc-ada",
            seen.version,
            vec![stale],
        ))
        .await;
    match attempt {
        Err(error) if error.is_conflict() => println!("   clerk A's append is refused: {error}"),
        other => anyhow::bail!("expected a conflict, got {other:?}"),
    }
    println!("   the pipeline handles this itself: on a conflict it reloads and re-runs `handle`.");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let cqrs = Arc::clone(&cqrs);
        tasks.spawn(async move {
            cqrs.execute("acc-bob", AccountCommand::Deposit { amount: 1_00 })
                .await
        });
    }
    let mut retries = 0;
    while let Some(joined) = tasks.join_next().await {
        retries += joined?.context("a concurrent deposit failed")?.retries;
    }
    let bob = cqrs.load("acc-bob").await?;
    println!(
        "   16 concurrent deposits of 1.00 into acc-bob: all applied, {retries} conflict(s) retried, balance {}",
        money(bob.state.balance)
    );

    println!("\n5. The same command twice (same command id) is applied once");
    let request = CommandMetadata::new().with_command_id(uuid_for("transfer-42"));
    let first = cqrs
        .execute_with(
            "acc-ada",
            AccountCommand::Withdraw { amount: 10_00 },
            request.clone(),
        )
        .await?;
    let again = cqrs
        .execute_with(
            "acc-ada",
            AccountCommand::Withdraw { amount: 10_00 },
            request,
        )
        .await?;
    println!(
        "   first: version {}, duplicate: {}; again: version {}, duplicate: {}",
        first.stream_version, first.duplicate, again.stream_version, again.duplicate
    );

    println!("\n6. The balances read model, read after waiting for our last write");
    let token = first.position.context("the withdrawal recorded an event")?;
    balances.wait_for(token, Duration::from_secs(5)).await?;
    println!("   (waited for position {token})");
    println!(
        "   {:<10} {:<6} {:>10} {:>10}",
        "account", "owner", "balance", "movements"
    );
    balances
        .read(|view| {
            for (id, row) in &view.accounts {
                println!(
                    "   {id:<10} {:<6} {:>10} {:>10}",
                    row.owner,
                    money(row.balance),
                    row.movements
                );
            }
        })
        .await;
    println!("\n{} events in the store.", store.len());
    Ok(())
}

fn describe(command: &AccountCommand) -> String {
    match command {
        AccountCommand::Open { owner } => format!("open for {owner}"),
        AccountCommand::Deposit { amount } => format!("deposit {}", money(*amount)),
        AccountCommand::Withdraw { amount } => format!("withdraw {}", money(*amount)),
    }
}

/// A stable command id derived from a client's request key.
fn uuid_for(key: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes())
}
