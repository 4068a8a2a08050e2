//! Both ways on the in-memory store, with the process's clock moved by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cqrs_core::memory::{MemoryEventStore, ProcessRunner};
use cqrs_core::process::{Dispatch, ManualClock, ProcessError, Refusal, StepInput, replay};
use cqrs_core::{CommandError, CommandMetadata};
use example_bank_transfer::{
    AccountCommand, AccountError, Bank, BankCommand, DEADLINE, Step, TransferCommand, TransferSaga,
    TransferStatus, transfer_atomically,
};

async fn bank_with(accounts: &[(&str, i64)]) -> Bank<MemoryEventStore> {
    let bank = Bank::new(MemoryEventStore::new());
    for (account, balance) in accounts {
        bank.accounts
            .dispatch(AccountCommand::Open {
                account: (*account).to_owned(),
                balance: *balance,
            })
            .await
            .expect("open");
    }
    bank
}

async fn balance(bank: &Bank<MemoryEventStore>, account: &str) -> i64 {
    bank.accounts
        .load(account)
        .await
        .expect("load")
        .state
        .balance
}

async fn status(bank: &Bank<MemoryEventStore>, transfer: &str) -> TransferStatus {
    bank.transfers
        .load(transfer)
        .await
        .expect("load")
        .state
        .status
}

async fn start(bank: &Bank<MemoryEventStore>, transfer: &str, from: &str, to: &str, amount: i64) {
    bank.transfers
        .dispatch(TransferCommand::Start {
            transfer: transfer.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            amount,
            deadline_ms: 5_000,
        })
        .await
        .expect("start");
}

#[tokio::test]
async fn the_atomic_way_moves_money_in_one_unit_or_refuses_with_nothing_written() {
    let bank = bank_with(&[("a", 100), ("b", 0)]).await;
    transfer_atomically(&bank.accounts, "t-1", "a", "b", 60, CommandMetadata::new())
        .await
        .expect("moved");
    assert_eq!(
        (balance(&bank, "a").await, balance(&bank, "b").await),
        (40, 60)
    );
    let refused =
        transfer_atomically(&bank.accounts, "t-2", "a", "b", 60, CommandMetadata::new()).await;
    assert!(matches!(
        refused,
        Err(CommandError::Rejected(AccountError::Insufficient {
            balance: 40,
            amount: 60
        }))
    ));
    assert_eq!(bank.accounts.load("b").await.expect("load").version, 2);
}

#[tokio::test]
async fn the_process_completes_a_transfer_and_compensates_a_refused_deposit() {
    let bank = bank_with(&[("a", 100), ("b", 0), ("gone", 0)]).await;
    bank.accounts
        .dispatch(AccountCommand::Close {
            account: "gone".into(),
        })
        .await
        .expect("close");
    let store = bank.accounts.store().as_ref().clone();
    let runner = ProcessRunner::<TransferSaga, _>::new(store, bank.clone());

    start(&bank, "t-ok", "a", "b", 30).await;
    start(&bank, "t-closed", "a", "gone", 20).await;
    start(&bank, "t-short", "b", "a", 500).await;
    runner.run_until_idle().await.expect("runs");

    assert_eq!(status(&bank, "t-ok").await, TransferStatus::Completed);
    assert_eq!(status(&bank, "t-closed").await, TransferStatus::Failed);
    assert_eq!(status(&bank, "t-short").await, TransferStatus::Failed);
    assert_eq!(balance(&bank, "a").await, 70, "30 left, 20 refunded");
    assert_eq!(balance(&bank, "b").await, 30);
    assert_eq!(balance(&bank, "gone").await, 0);
    for transfer in ["t-ok", "t-closed", "t-short"] {
        assert!(runner.is_finished(transfer).await, "{transfer} finished");
        assert!(runner.timers(transfer).await.is_empty());
    }
    assert_eq!(runner.pending_commands().await, 0);

    // The process is event-sourced: its history folds into its state. t-ok heard its
    // start, the withdrawal, the deposit and the completion; it sent three commands.
    let history = runner.history("t-ok").await;
    let kinds: Vec<u64> = history.iter().map(|step| step.version).collect();
    assert_eq!(kinds, [1, 2, 3, 4]);
    assert_eq!(history.iter().map(|s| s.sent.len()).sum::<usize>(), 3);
    assert!(history.last().is_some_and(|step| step.finished));
    let saga: TransferSaga = replay("t-ok", history.iter().map(|step| &step.input)).expect("folds");
    assert_eq!(
        (saga.from.as_str(), saga.to.as_str(), saga.amount),
        ("a", "b", 30)
    );
    assert_eq!(
        (saga.withdraw, saga.deposit, saga.failed),
        (Step::Done, Step::Done, false)
    );
    // t-closed: the refused deposit is a step of its own.
    let history = runner.history("t-closed").await;
    assert!(
        history
            .iter()
            .any(|step| matches!(step.input, StepInput::Refused { .. })),
        "{history:#?}"
    );
    let saga: TransferSaga =
        replay("t-closed", history.iter().map(|step| &step.input)).expect("folds");
    assert_eq!(
        (saga.deposit, saga.refund, saga.failed),
        (Step::Refused, Step::Done, true)
    );
}

/// Sends to the bank, but cannot carry out deposits while `down`.
#[derive(Clone)]
struct Flaky {
    bank: Bank<MemoryEventStore>,
    down: Arc<AtomicBool>,
}

impl Dispatch<BankCommand> for Flaky {
    async fn dispatch(
        &self,
        command: BankCommand,
        metadata: CommandMetadata,
    ) -> Result<(), Refusal> {
        let deposit = matches!(
            command,
            BankCommand::Account(AccountCommand::Deposit { .. })
        );
        if deposit && self.down.load(Ordering::SeqCst) {
            return Err(Refusal::Failed("deposits are down".into()));
        }
        self.bank.dispatch(command, metadata).await
    }
}

#[tokio::test]
async fn the_deadline_fails_a_stalled_transfer_and_puts_back_what_arrived_late() {
    let bank = bank_with(&[("a", 100), ("b", 0)]).await;
    let down = Arc::new(AtomicBool::new(true));
    let clock = ManualClock::new();
    let store = bank.accounts.store().as_ref().clone();
    let runner = ProcessRunner::<TransferSaga, _>::new(
        store,
        Flaky {
            bank: bank.clone(),
            down: Arc::clone(&down),
        },
    )
    .with_clock(clock.clone());

    start(&bank, "t-1", "a", "b", 40).await;
    // The withdrawal goes through; the deposit cannot, and waits.
    let stalled = runner.run_until_idle().await;
    assert!(
        matches!(stalled, Err(ProcessError::Dispatch { .. })),
        "{stalled:?}"
    );
    assert_eq!(balance(&bank, "a").await, 60);
    assert_eq!(
        runner.timers("t-1").await,
        [(DEADLINE.to_owned(), Duration::from_secs(5))]
    );

    // The deadline passes while the deposit waits: the transfer is failed once the
    // deposit lands, and both legs are put back.
    let stalled = runner.advance(Duration::from_secs(5)).await;
    assert!(matches!(stalled, Err(ProcessError::Dispatch { .. })));
    assert!(runner.timers("t-1").await.is_empty(), "the deadline fired");
    assert_eq!(clock.now(), Duration::from_secs(5));
    down.store(false, Ordering::SeqCst);
    runner.run_until_idle().await.expect("runs");

    assert_eq!(status(&bank, "t-1").await, TransferStatus::Failed);
    assert_eq!(balance(&bank, "a").await, 100, "refunded");
    assert_eq!(
        balance(&bank, "b").await,
        0,
        "the late deposit was reversed"
    );
    assert!(runner.is_finished("t-1").await);
}
