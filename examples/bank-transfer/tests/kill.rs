//! The transfer process survives SIGKILL: transfers run while `transfer-saga` processes
//! (one or two at a time, on PostgreSQL) are killed at random points and restarted;
//! afterwards money is conserved, every transfer is completed or failed with its money
//! put back, and no step happened twice.
//!
//! `KILL_ROUNDS` sets the number of rounds (default 20), `KILL_SEED` replays one.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cqrs_core::process::replay;
use cqrs_core::{CommandMetadata, EventStore};
use cqrs_postgres::PgEventStore;
use example_bank_transfer::{
    AccountCommand, AccountEvent, Bank, DEFAULT_DATABASE_URL, Step, TransferCommand, TransferSaga,
    TransferStatus, connect,
};
use uuid::Uuid;

const ACCOUNTS: usize = 8;
const OPENING_BALANCE: i64 = 1_000;
const TRANSFERS: usize = 120;

fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// xorshift64*: enough randomness for kill points, and replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn index(&mut self, len: usize) -> usize {
        let len = u64::try_from(len).expect("a small length");
        usize::try_from(self.below(len)).expect("below a usize")
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// The `transfer-saga` processes of one round.
struct Sagas {
    schema: String,
    running: Vec<Child>,
    started: usize,
    killed: usize,
}

impl Sagas {
    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_transfer-saga"))
            .env("DATABASE_URL", database_url())
            .env("CQRS_SCHEMA", &self.schema)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("transfer-saga starts");
        self.running.push(child);
        self.started += 1;
    }

    /// SIGKILL (what `Child::kill` sends on Unix) to one of them.
    fn kill(&mut self, which: usize) {
        let mut child = self.running.swap_remove(which % self.running.len());
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        self.killed += 1;
    }

    fn kill_all(&mut self) {
        while !self.running.is_empty() {
            self.kill(0);
        }
    }
}

impl Drop for Sagas {
    fn drop(&mut self) {
        for child in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_end_completed_or_compensated_when_the_process_is_killed_at_random() {
    let rounds: u64 = std::env::var("KILL_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("KILL_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| u64::from(Uuid::new_v4().as_fields().0) | 1);
    let mut totals = (0, 0, 0, 0);
    for round in 0..rounds {
        let round_seed = seed.wrapping_add(round.wrapping_mul(0x9E37_79B9)) | 1;
        let (completed, failed, started, killed) = run_round(round_seed).await;
        totals.0 += completed;
        totals.1 += failed;
        totals.2 += started;
        totals.3 += killed;
    }
    println!(
        "{rounds} rounds (seed {seed}): {} transfers completed, {} failed and compensated; \
         {} saga processes started, {} killed with SIGKILL",
        totals.0, totals.1, totals.2, totals.3
    );
    assert!(
        u64::try_from(totals.3).expect("a count") >= rounds,
        "every round killed at least one process"
    );
}

async fn run_round(seed: u64) -> (usize, usize, usize, usize) {
    let mut rng = Rng(seed);
    let schema = format!(
        "transfer_kill_{}",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let store = connect(&database_url(), &schema).await.expect("store");
    let bank = Bank::new(store.clone());
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("acc-{i}")).collect();
    for account in &accounts {
        bank.accounts
            .dispatch(AccountCommand::Open {
                account: account.clone(),
                balance: OPENING_BALANCE,
            })
            .await
            .expect("open");
    }
    // Deposits into this one are refused: the compensation path.
    bank.accounts
        .dispatch(AccountCommand::Open {
            account: "closed".into(),
            balance: 0,
        })
        .await
        .expect("open");
    bank.accounts
        .dispatch(AccountCommand::Close {
            account: "closed".into(),
        })
        .await
        .expect("close");

    let mut sagas = Sagas {
        schema: schema.clone(),
        running: Vec::new(),
        started: 0,
        killed: 0,
    };
    sagas.spawn();

    // Start the transfers over a second or two, while processes are killed.
    let plan: Vec<(String, String, String, i64, u64)> = (0..TRANSFERS)
        .map(|i| {
            let from = accounts[rng.index(ACCOUNTS)].clone();
            let to = if rng.below(10) == 0 {
                "closed".to_owned()
            } else {
                let mut to = from.clone();
                while to == from {
                    to = accounts[rng.index(ACCOUNTS)].clone();
                }
                to
            };
            let amount = 50 + i64::try_from(rng.below(400)).expect("small");
            let deadline_ms = 150 + rng.below(1500);
            (format!("t-{i}"), from, to, amount, deadline_ms)
        })
        .collect();
    let gaps: Vec<Duration> = (0..TRANSFERS).map(|_| rng.millis(0, 12)).collect();
    let starter = {
        let transfers = bank.transfers.clone();
        tokio::spawn(async move {
            for ((transfer, from, to, amount, deadline_ms), gap) in plan.into_iter().zip(gaps) {
                transfers
                    .execute_with(
                        &transfer.clone(),
                        TransferCommand::Start {
                            transfer,
                            from,
                            to,
                            amount,
                            deadline_ms,
                        },
                        CommandMetadata::new(),
                    )
                    .await
                    .expect("start");
                tokio::time::sleep(gap).await;
            }
        })
    };
    // Kill at random points until the transfers are all started, and a little after.
    let chaos_until = Instant::now() + Duration::from_millis(2_500);
    while !starter.is_finished() || Instant::now() < chaos_until {
        tokio::time::sleep(rng.millis(20, 300)).await;
        if sagas.running.len() < 2 && rng.below(2) == 0 {
            sagas.spawn();
        }
        let which = rng.index(2);
        sagas.kill(which);
        if rng.below(3) == 0 {
            // Down for a while: deadlines pass meanwhile.
            tokio::time::sleep(rng.millis(0, 800)).await;
        }
        if sagas.running.is_empty() {
            sagas.spawn();
        }
    }
    starter.await.expect("transfers started");

    // One process finishes the work.
    if sagas.running.is_empty() {
        sagas.spawn();
    }
    settle(&store).await;
    sagas.kill_all();

    let (completed, failed) = check(&bank, &store, &accounts).await;
    drop_schema(&store, &schema).await;
    (completed, failed, sagas.started, sagas.killed)
}

/// Waits until every transfer's process has finished and nothing waits to be sent.
async fn settle(store: &PgEventStore) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut tx = store.begin_in_schema().await.expect("transaction");
        let (running, finished, waiting, timers): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT \
               (SELECT count(*) FROM process_instances WHERE manager = 'transfers' AND finished_at IS NULL), \
               (SELECT count(*) FROM process_instances WHERE manager = 'transfers' AND finished_at IS NOT NULL), \
               (SELECT count(*) FROM process_outbox WHERE manager = 'transfers'), \
               (SELECT count(*) FROM process_timers WHERE manager = 'transfers')",
        )
        .fetch_one(&mut *tx)
        .await
        .expect("counts");
        drop(tx);
        if running == 0 && usize::try_from(finished) == Ok(TRANSFERS) && waiting == 0 && timers == 0
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the transfers did not settle: {running} running, {finished} finished, \
             {waiting} commands waiting, {timers} timers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the outcome; returns how many transfers completed and failed.
async fn check(
    bank: &Bank<PgEventStore>,
    store: &PgEventStore,
    accounts: &[String],
) -> (usize, usize) {
    // Per transfer: what each kind of account event moved, and how often it happened.
    let mut moves: HashMap<String, HashMap<&'static str, (i64, u32)>> = HashMap::new();
    let mut total = 0;
    for account in accounts.iter().map(String::as_str).chain(["closed"]) {
        let loaded = bank.accounts.load(account).await.expect("account");
        total += loaded.state.balance;
        for raw in store.load("account", account, 0).await.expect("events") {
            let event = raw.decode::<AccountEvent>().expect("decodes").payload;
            let (transfer, kind, amount) = match event {
                AccountEvent::Withdrawn { transfer, amount } => (transfer, "withdrawn", amount),
                AccountEvent::Deposited { transfer, amount } => (transfer, "deposited", amount),
                AccountEvent::Refunded { transfer, amount } => (transfer, "refunded", amount),
                AccountEvent::Reversed { transfer, amount } => (transfer, "reversed", amount),
                AccountEvent::Opened { .. } | AccountEvent::Closed => continue,
            };
            let entry = moves.entry(transfer).or_default().entry(kind).or_default();
            entry.0 += amount;
            entry.1 += 1;
        }
    }
    assert_eq!(
        total,
        OPENING_BALANCE * i64::try_from(ACCOUNTS).expect("small"),
        "money is conserved"
    );
    let (mut completed, mut failed) = (0, 0);
    for i in 0..TRANSFERS {
        let id = format!("t-{i}");
        let status = bank
            .transfers
            .load(&id)
            .await
            .expect("transfer")
            .state
            .status;
        let empty = HashMap::new();
        let moved = moves.get(&id).unwrap_or(&empty);
        for (kind, (_, times)) in moved {
            assert_eq!(*times, 1, "{id}: {kind} happened {times} times");
        }
        let amount = |kind| moved.get(kind).map_or(0, |(amount, _)| *amount);
        // The process's own history: each input reacted to once, the last step finished
        // it, and its fold agrees with what happened to the accounts.
        let history = store
            .process_history("transfers", &id)
            .await
            .expect("history");
        let mut inputs = HashSet::new();
        for step in &history {
            assert!(
                inputs.insert(step.input.id()),
                "{id}: one input reacted to twice: {history:#?}"
            );
        }
        assert!(
            history.last().is_some_and(|step| step.finished),
            "{id} did not finish"
        );
        let saga: TransferSaga =
            replay(&id, history.iter().map(|step| &step.input)).expect("the history folds");
        assert_eq!(
            saga.withdraw == Step::Done,
            amount("withdrawn") > 0,
            "{id}: {saga:?}"
        );
        assert_eq!(
            saga.deposit == Step::Done,
            amount("deposited") > 0,
            "{id}: {saga:?}"
        );
        assert_eq!(
            saga.failed,
            status == TransferStatus::Failed,
            "{id}: {saga:?}"
        );
        match status {
            TransferStatus::Completed => {
                completed += 1;
                assert!(
                    amount("withdrawn") > 0,
                    "{id} completed without a withdrawal"
                );
                assert_eq!(amount("withdrawn"), amount("deposited"), "{id}: {moved:?}");
                assert_eq!(
                    amount("refunded") + amount("reversed"),
                    0,
                    "{id}: {moved:?}"
                );
            }
            TransferStatus::Failed => {
                failed += 1;
                assert_eq!(
                    amount("withdrawn"),
                    amount("refunded"),
                    "{id} not refunded: {moved:?}"
                );
                assert_eq!(
                    amount("deposited"),
                    amount("reversed"),
                    "{id} not reversed: {moved:?}"
                );
            }
            other => panic!("{id} ended {other:?}"),
        }
    }
    (completed, failed)
}

async fn drop_schema(store: &PgEventStore, schema: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(store.pool())
    .await
    .expect("drop schema");
}
