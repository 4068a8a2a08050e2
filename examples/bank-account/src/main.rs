//! A tour of cqrs on a bank account: open accounts, move money, see a command refused,
//! watch concurrent writers conflict and the pipeline retry, send the same command twice
//! and have it applied once, then read a projection that waited for our own writes (and,
//! on PostgreSQL, a view kept inside the append statement itself).
//!
//! Run it with:
//!
//! ```text
//! cargo run -p example-bank-account
//! ```
//!
//! Without `DATABASE_URL` it needs nothing else: events live in the in-memory store. With
//! `DATABASE_URL=postgres://…` they go to PostgreSQL (schema `cqrs`, created on first
//! run), and each run uses fresh account ids. Amounts are in cents. Set
//! `RUST_LOG=cqrs_core=debug` to see the pipeline's own trace (conflicts, retries).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cqrs_core::memory::{MemoryEventStore, Projector};
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{
    Aggregate, CommandError, CommandMetadata, Cqrs, EventStore, Metadata, ReadYourWrites,
};
use cqrs_postgres::{PgEventStore, PgInlineSql};
use example_bank_account::{AccountCommand, AccountEvent, Balances, BankAccount};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("example_bank_account=debug")),
        )
        .init();

    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let store = PgEventStore::connect(&url)
                .await
                .with_context(|| format!("cannot connect to DATABASE_URL={url}"))?;
            store
                .migrate()
                .await
                .context("cannot create the event store schema")?;
            let store = Arc::new(with_inline_balances(store).await?);
            let balances = Projector::polling(
                Arc::clone(&store),
                Balances::default(),
                Duration::from_millis(20),
            );
            // Fresh account ids, so that the tour can run again on the same database.
            let run = uuid::Uuid::new_v4().simple().to_string();
            let run = &run[..6];
            tour(Arc::clone(&store), balances, "PostgreSQL", run).await?;
            show_inline_balances(&store, run).await
        }
        Err(_) => {
            // Every call to this store takes a millisecond, as a call across a network
            // would; that is what makes the concurrent writers below actually collide.
            let store = MemoryEventStore::with_latency(Duration::from_millis(1));
            let balances = Projector::new(store.clone(), Balances::default());
            tour(Arc::new(store), balances, "the in-memory store", "").await
        }
    }
}

async fn tour<S: EventStore>(
    store: Arc<S>,
    balances: Projector<Balances, S>,
    store_name: &str,
    run: &str,
) -> anyhow::Result<()> {
    println!("cqrs bank-account tour, on {store_name}\n");
    let cqrs = Arc::new(Cqrs::<BankAccount, _>::new(Arc::clone(&store)));
    let _live = balances.spawn(); // keeps the read model up to date in the background
    let [ada, bob] = ["acc-ada", "acc-bob"].map(|id| {
        if run.is_empty() {
            id.to_owned()
        } else {
            format!("{id}-{run}")
        }
    });

    println!("1. Open two accounts");
    for (id, owner) in [(&ada, "Ada"), (&bob, "Bob")] {
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
        (
            &ada,
            AccountCommand::Deposit {
                amount: dollars(100),
            },
        ),
        (
            &bob,
            AccountCommand::Deposit {
                amount: dollars(20),
            },
        ),
        (
            &ada,
            AccountCommand::Withdraw {
                amount: dollars(35) + 50,
            },
        ),
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
        .execute(
            &bob,
            AccountCommand::Withdraw {
                amount: dollars(500),
            },
        )
        .await
    {
        Err(CommandError::Rejected(reason)) => {
            println!("   {bob}: withdraw 500.00 refused: {reason}; nothing was written");
        }
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    }

    println!("\n4. Two writers, one stream: optimistic concurrency");
    let seen = cqrs.load(&ada).await?;
    println!("   clerk A reads {ada} at version {}", seen.version);
    cqrs.execute(&ada, AccountCommand::Deposit { amount: dollars(1) })
        .await?;
    println!(
        "   clerk B deposits 1.00 meanwhile ({ada} is now at version {})",
        seen.version + 1
    );
    let stale = NewEvent::from_event(
        &AccountEvent::Deposited { amount: dollars(2) },
        Metadata::default(),
    )?;
    let attempt = store
        .append(AppendRequest::new(
            BankAccount::TYPE,
            ada.clone(),
            seen.version,
            vec![stale],
        ))
        .await;
    match attempt {
        Err(error) if error.is_conflict() => println!("   clerk A's append is refused: {error}"),
        other => anyhow::bail!("expected a conflict, got {other:?}"),
    }
    println!("   the pipeline handles this itself: on a conflict it reloads and re-runs `handle`.");
    // Sixteen pipelines, as sixteen processes would have: within one pipeline, the
    // commands of one aggregate queue in the process instead of racing.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let cqrs = Cqrs::<BankAccount, _>::new(Arc::clone(&store));
        let bob = bob.clone();
        tasks.spawn(async move {
            cqrs.execute(&bob, AccountCommand::Deposit { amount: dollars(1) })
                .await
        });
    }
    let mut retries = 0;
    while let Some(joined) = tasks.join_next().await {
        retries += joined?.context("a concurrent deposit failed")?.retries;
    }
    let balance = cqrs.load(&bob).await?.state.balance;
    println!(
        "   16 concurrent deposits of 1.00 into {bob}, from 16 pipelines: all applied, {retries} conflict(s) retried, balance {}",
        money(balance)
    );

    println!("\n5. The same command twice (same command id) is applied once");
    let request = CommandMetadata::new().with_command_id(uuid::Uuid::new_v4());
    let first = cqrs
        .execute_with(
            &ada,
            AccountCommand::Withdraw {
                amount: dollars(10),
            },
            request.clone(),
        )
        .await?;
    let again = cqrs
        .execute_with(
            &ada,
            AccountCommand::Withdraw {
                amount: dollars(10),
            },
            request,
        )
        .await?;
    println!(
        "   first: version {}, duplicate: {}; again: version {}, duplicate: {}",
        first.stream_version, first.duplicate, again.stream_version, again.duplicate
    );

    println!("\n6. The balances read model, read after waiting for our last write");
    let token = first.position.context("the withdrawal recorded an event")?;
    balances
        .wait_for::<Balances>(token, Duration::from_secs(5))
        .await?;
    println!("   (waited for position {token})");
    println!(
        "   {:<17} {:<6} {:>10} {:>10}",
        "account", "owner", "balance", "movements"
    );
    balances
        .read(|view| {
            for id in [&ada, &bob] {
                if let Some(row) = view.accounts.get(id.as_str()) {
                    println!(
                        "   {id:<17} {:<6} {:>10} {:>10}",
                        row.owner,
                        money(row.balance),
                        row.movements
                    );
                }
            }
        })
        .await;
    Ok(())
}

/// The store, also keeping `cqrs.tour_balances` up to date inside every append statement:
/// an inline SQL projection, which never lags behind the log.
async fn with_inline_balances(store: PgEventStore) -> anyhow::Result<PgEventStore> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS cqrs.tour_balances \
         (account text PRIMARY KEY, balance bigint NOT NULL, movements bigint NOT NULL)",
    )
    .execute(store.pool())
    .await
    .context("cannot create the inline view's table")?;
    let balances = PgInlineSql::new(
        "tour_balances",
        format!(
            "INSERT INTO cqrs.tour_balances AS b (account, balance, movements) \
             SELECT stream_id, \
                    sum(CASE event_type \
                        WHEN 'Deposited' THEN (payload->>'amount')::bigint \
                        WHEN 'Withdrawn' THEN -(payload->>'amount')::bigint \
                        ELSE 0 END), \
                    count(*) FILTER (WHERE event_type <> 'Opened') \
             FROM appended WHERE stream_type = '{}' \
             GROUP BY stream_id \
             ON CONFLICT (account) DO UPDATE \
             SET balance = b.balance + excluded.balance, movements = b.movements + excluded.movements",
            BankAccount::TYPE
        ),
    )?;
    Ok(store.to_builder().inline_sql(balances).build()?)
}

/// The inline view of this run's accounts: read straight away, no wait needed.
async fn show_inline_balances(store: &PgEventStore, run: &str) -> anyhow::Result<()> {
    println!("\n7. The same balances, kept by PostgreSQL inside each append statement (no wait)");
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT account, balance, movements FROM cqrs.tour_balances \
         WHERE account LIKE '%-' || $1 ORDER BY account",
    )
    .bind(run)
    .fetch_all(store.pool())
    .await
    .context("cannot read the inline view")?;
    for (account, balance, movements) in rows {
        println!(
            "   {account:<17} {:>17} {movements:>10}",
            money(u64::try_from(balance).unwrap_or(0))
        );
    }
    Ok(())
}

/// An amount in cents.
fn dollars(whole: u64) -> u64 {
    whole * 100
}

fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn describe(command: &AccountCommand) -> String {
    match command {
        AccountCommand::Open { owner } => format!("open for {owner}"),
        AccountCommand::Deposit { amount } => format!("deposit {}", money(*amount)),
        AccountCommand::Withdraw { amount } => format!("withdraw {}", money(*amount)),
    }
}
