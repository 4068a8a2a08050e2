//! Money moved between two accounts, both ways.
//!
//! - **Atomically** ([`transfer_atomically`]): one decision over both accounts, whose
//!   events are appended to the two streams in one commit. Nothing is ever half done;
//!   both accounts must live in the same store.
//! - **As a process** ([`TransferSaga`]): a [`Transfer`] is started, and a process
//!   manager withdraws from one account, deposits into the other and completes the
//!   transfer, one command at a time. When the withdrawal is refused, the deposit is
//!   refused (a closed account), or the transfer's deadline passes first, it fails the
//!   transfer and puts the money back (compensation). Each step is its own commit, so
//!   the accounts could live in different stores or services.
//!
//! The `transfer-saga` binary runs the process manager against PostgreSQL; the
//! `transfer-bench` binary measures both ways.

use std::time::Duration;

use cqrs_core::event_union;
use cqrs_core::prelude::*;
use cqrs_core::process::{Dispatch, Effects, Refusal};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// Accounts

/// An account: its balance, and whether it still takes deposits.
#[derive(Debug, Default, Clone, Serialize, Deserialize, Aggregate)]
#[cqrs(name = "account", command = AccountCommand, event = AccountEvent, error = AccountError)]
pub struct Account {
    /// Whether the account was opened.
    pub open: bool,
    /// Whether it was closed (it then takes no withdrawal or deposit).
    pub closed: bool,
    /// Its balance, in cents.
    pub balance: i64,
}

/// What happens to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
pub enum AccountEvent {
    /// Opened with a first balance.
    Opened {
        /// The first balance.
        balance: i64,
    },
    /// Closed: no more withdrawals or deposits.
    Closed,
    /// Money taken out for a transfer.
    Withdrawn {
        /// The transfer.
        transfer: String,
        /// How much.
        amount: i64,
    },
    /// Money put in by a transfer.
    Deposited {
        /// The transfer.
        transfer: String,
        /// How much.
        amount: i64,
    },
    /// A failed transfer's withdrawal, given back.
    Refunded {
        /// The transfer.
        transfer: String,
        /// How much.
        amount: i64,
    },
    /// A failed transfer's deposit, taken back.
    Reversed {
        /// The transfer.
        transfer: String,
        /// How much.
        amount: i64,
    },
}

/// What can be asked of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Command)]
pub enum AccountCommand {
    /// Open it with a first balance.
    Open {
        /// The account.
        #[cqrs(id)]
        account: String,
        /// The first balance.
        balance: i64,
    },
    /// Close it.
    Close {
        /// The account.
        #[cqrs(id)]
        account: String,
    },
    /// Take money out for a transfer; refused when short or closed.
    Withdraw {
        /// The account.
        #[cqrs(id)]
        account: String,
        /// The transfer.
        transfer: String,
        /// How much.
        amount: i64,
    },
    /// Put money in for a transfer; refused when closed.
    Deposit {
        /// The account.
        #[cqrs(id)]
        account: String,
        /// The transfer.
        transfer: String,
        /// How much.
        amount: i64,
    },
    /// Give back a failed transfer's withdrawal. Never refused: compensation must go
    /// through.
    Refund {
        /// The account.
        #[cqrs(id)]
        account: String,
        /// The transfer.
        transfer: String,
        /// How much.
        amount: i64,
    },
    /// Take back a failed transfer's deposit. Never refused (the balance may go below
    /// zero when the money was spent meanwhile).
    Reverse {
        /// The account.
        #[cqrs(id)]
        account: String,
        /// The transfer.
        transfer: String,
        /// How much.
        amount: i64,
    },
}

/// Why an account refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// Opened twice.
    #[error("the account is already open")]
    AlreadyOpen,
    /// Never opened.
    #[error("no such account")]
    NotOpen,
    /// Closed.
    #[error("the account is closed")]
    Closed,
    /// Not enough money.
    #[error("insufficient funds: balance {balance}, asked {amount}")]
    Insufficient {
        /// The balance.
        balance: i64,
        /// What was asked.
        amount: i64,
    },
    /// A negative or zero amount.
    #[error("the amount must be positive, not {0}")]
    BadAmount(i64),
}

impl Apply<AccountEvent> for Account {
    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { balance } => {
                self.open = true;
                self.balance = *balance;
            }
            AccountEvent::Closed => self.closed = true,
            AccountEvent::Withdrawn { amount, .. } | AccountEvent::Reversed { amount, .. } => {
                self.balance -= amount;
            }
            AccountEvent::Deposited { amount, .. } | AccountEvent::Refunded { amount, .. } => {
                self.balance += amount;
            }
        }
    }
}

impl Account {
    /// Whether `amount` can be taken out for a transfer.
    ///
    /// # Errors
    ///
    /// Why not.
    pub fn can_withdraw(&self, amount: i64) -> Result<(), AccountError> {
        self.can_deposit(amount)?;
        if self.balance < amount {
            return Err(AccountError::Insufficient {
                balance: self.balance,
                amount,
            });
        }
        Ok(())
    }

    /// Whether `amount` can be put in by a transfer.
    ///
    /// # Errors
    ///
    /// Why not.
    pub fn can_deposit(&self, amount: i64) -> Result<(), AccountError> {
        if amount <= 0 {
            return Err(AccountError::BadAmount(amount));
        }
        if !self.open {
            return Err(AccountError::NotOpen);
        }
        if self.closed {
            return Err(AccountError::Closed);
        }
        Ok(())
    }
}

impl Handle<AccountCommand> for Account {
    async fn handle(
        &self,
        command: &AccountCommand,
        (): &(),
    ) -> Result<Vec<AccountEvent>, AccountError> {
        let event = match command {
            AccountCommand::Open { balance, .. } => {
                if self.open {
                    return Err(AccountError::AlreadyOpen);
                }
                AccountEvent::Opened { balance: *balance }
            }
            AccountCommand::Close { .. } => {
                if !self.open {
                    return Err(AccountError::NotOpen);
                }
                AccountEvent::Closed
            }
            AccountCommand::Withdraw {
                transfer, amount, ..
            } => {
                self.can_withdraw(*amount)?;
                AccountEvent::Withdrawn {
                    transfer: transfer.clone(),
                    amount: *amount,
                }
            }
            AccountCommand::Deposit {
                transfer, amount, ..
            } => {
                self.can_deposit(*amount)?;
                AccountEvent::Deposited {
                    transfer: transfer.clone(),
                    amount: *amount,
                }
            }
            AccountCommand::Refund {
                transfer, amount, ..
            } => AccountEvent::Refunded {
                transfer: transfer.clone(),
                amount: *amount,
            },
            AccountCommand::Reverse {
                transfer, amount, ..
            } => AccountEvent::Reversed {
                transfer: transfer.clone(),
                amount: *amount,
            },
        };
        Ok(vec![event])
    }
}

// ---------------------------------------------------------------------------------------
// The atomic way

/// Moves `amount` from `from` to `to` in one atomic unit over the two account streams:
/// both events are appended in one commit, or none (retried when either account
/// changed meanwhile). `transfer` names the transfer in the events, and its command id
/// makes sending it twice safe.
///
/// # Errors
///
/// [`CommandError::Rejected`] with the account's refusal (short, closed, unknown), and
/// the pipeline's other errors.
pub async fn transfer_atomically<S>(
    accounts: &Cqrs<Account, S>,
    transfer: &str,
    from: &str,
    to: &str,
    amount: i64,
    metadata: CommandMetadata,
) -> Result<(), CommandError<AccountError>>
where
    S: EventStore + ?Sized,
{
    accounts
        .execute_many(&[from, to], metadata, |states| {
            states[0].can_withdraw(amount)?;
            states[1].can_deposit(amount)?;
            Ok(vec![
                vec![AccountEvent::Withdrawn {
                    transfer: transfer.to_owned(),
                    amount,
                }],
                vec![AccountEvent::Deposited {
                    transfer: transfer.to_owned(),
                    amount,
                }],
            ])
        })
        .await
        .map(|_| ())
}

// ---------------------------------------------------------------------------------------
// Transfers

/// A transfer done step by step: started, then completed or failed.
#[derive(Debug, Default, Clone, Serialize, Deserialize, Aggregate)]
#[cqrs(name = "transfer", command = TransferCommand, event = TransferEvent, error = TransferError)]
pub struct Transfer {
    /// Where it stands.
    pub status: TransferStatus,
}

/// Where a transfer stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferStatus {
    /// Not started.
    #[default]
    None,
    /// Started, not yet settled.
    Running,
    /// The money moved.
    Completed,
    /// It did not move (or was put back).
    Failed,
}

/// What happens to a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Event)]
pub enum TransferEvent {
    /// Asked for.
    TransferStarted {
        /// From this account.
        from: String,
        /// To this one.
        to: String,
        /// How much.
        amount: i64,
        /// How long it may take, in milliseconds, before it fails.
        deadline_ms: u64,
    },
    /// The money moved.
    TransferCompleted,
    /// It failed; any money taken is put back.
    TransferFailed {
        /// Why.
        reason: String,
    },
}

/// What can be asked of a transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Command)]
pub enum TransferCommand {
    /// Start it.
    Start {
        /// The transfer.
        #[cqrs(id)]
        transfer: String,
        /// From this account.
        from: String,
        /// To this one.
        to: String,
        /// How much.
        amount: i64,
        /// How long it may take before it fails.
        deadline_ms: u64,
    },
    /// Settle it as done; refused once failed.
    Complete {
        /// The transfer.
        #[cqrs(id)]
        transfer: String,
    },
    /// Settle it as failed; refused once completed.
    Fail {
        /// The transfer.
        #[cqrs(id)]
        transfer: String,
        /// Why.
        reason: String,
    },
}

/// Why a transfer refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Started twice.
    #[error("the transfer was already started")]
    AlreadyStarted,
    /// Not started.
    #[error("no such transfer")]
    Unknown,
    /// Settled the other way already.
    #[error("the transfer is already {0:?}")]
    Settled(TransferStatus),
    /// A transfer to the account it comes from, or of nothing.
    #[error("invalid transfer: {0}")]
    Invalid(&'static str),
}

impl Apply<TransferEvent> for Transfer {
    fn apply(&mut self, event: &TransferEvent) {
        self.status = match event {
            TransferEvent::TransferStarted { .. } => TransferStatus::Running,
            TransferEvent::TransferCompleted => TransferStatus::Completed,
            TransferEvent::TransferFailed { .. } => TransferStatus::Failed,
        };
    }
}

impl Handle<TransferCommand> for Transfer {
    async fn handle(
        &self,
        command: &TransferCommand,
        (): &(),
    ) -> Result<Vec<TransferEvent>, TransferError> {
        match (command, self.status) {
            (
                TransferCommand::Start {
                    from,
                    to,
                    amount,
                    deadline_ms,
                    ..
                },
                TransferStatus::None,
            ) => {
                if from == to {
                    return Err(TransferError::Invalid("from and to are the same account"));
                }
                if *amount <= 0 {
                    return Err(TransferError::Invalid("the amount must be positive"));
                }
                Ok(vec![TransferEvent::TransferStarted {
                    from: from.clone(),
                    to: to.clone(),
                    amount: *amount,
                    deadline_ms: *deadline_ms,
                }])
            }
            (TransferCommand::Start { .. }, _) => Err(TransferError::AlreadyStarted),
            (_, TransferStatus::None) => Err(TransferError::Unknown),
            (TransferCommand::Complete { .. }, TransferStatus::Running) => {
                Ok(vec![TransferEvent::TransferCompleted])
            }
            (TransferCommand::Fail { reason, .. }, TransferStatus::Running) => {
                Ok(vec![TransferEvent::TransferFailed {
                    reason: reason.clone(),
                }])
            }
            // Settling the same way twice changes nothing.
            (TransferCommand::Complete { .. }, TransferStatus::Completed)
            | (TransferCommand::Fail { .. }, TransferStatus::Failed) => Ok(vec![]),
            (TransferCommand::Complete { .. } | TransferCommand::Fail { .. }, settled) => {
                Err(TransferError::Settled(settled))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The process

event_union! {
    /// What the transfer process hears: transfers and accounts.
    #[derive(Debug, Clone, PartialEq)]
    pub enum BankEvent {
        /// A transfer's events.
        Transfer(TransferEvent),
        /// An account's events.
        Account(AccountEvent),
    }
}

/// What the transfer process sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankCommand {
    /// To an account.
    Account(AccountCommand),
    /// To a transfer.
    Transfer(TransferCommand),
}

/// The outcome of a command the process sent, as far as it knows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Not sent.
    #[default]
    NotSent,
    /// Sent, outcome not known yet.
    Pending,
    /// Carried out (its event was seen).
    Done,
    /// Refused.
    Refused,
}

/// The transfer process: withdraw, deposit, complete; fail and put the money back when
/// a step is refused or the deadline passes first.
///
/// It never finishes while the outcome of a withdrawal or deposit it sent is unknown,
/// so money taken is always either delivered or put back.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize, ProcessManager)]
#[cqrs(name = "transfers", event = BankEvent, command = BankCommand)]
pub struct TransferSaga {
    /// The transfer.
    pub transfer: String,
    /// From this account.
    pub from: String,
    /// To this one.
    pub to: String,
    /// How much.
    pub amount: i64,
    /// The withdrawal.
    pub withdraw: Step,
    /// The deposit.
    pub deposit: Step,
    /// Whether the transfer failed.
    pub failed: bool,
    /// Whether the refund was sent, and whether it was seen.
    pub refund: Step,
    /// Whether the reversal was sent, and whether it was seen.
    pub reverse: Step,
}

/// The name of the transfer's deadline timer.
pub const DEADLINE: &str = "deadline";

impl TransferSaga {
    fn account(
        &self,
        command: fn(String, String, i64) -> AccountCommand,
        account: &str,
    ) -> BankCommand {
        BankCommand::Account(command(
            account.to_owned(),
            self.transfer.clone(),
            self.amount,
        ))
    }

    fn fail(&self, reason: impl Into<String>) -> BankCommand {
        BankCommand::Transfer(TransferCommand::Fail {
            transfer: self.transfer.clone(),
            reason: reason.into(),
        })
    }

    /// Once failed: puts back what moved, and finishes when all is back.
    fn settle(&mut self, effects: &mut Effects<BankCommand>) {
        if !self.failed {
            return;
        }
        if self.withdraw == Step::Done
            && self.deposit != Step::Pending
            && self.refund == Step::NotSent
        {
            effects.send(self.account(refund, &self.from.clone()));
            self.refund = Step::Pending;
        }
        if self.deposit == Step::Done && self.reverse == Step::NotSent {
            effects.send(self.account(reverse, &self.to.clone()));
            self.reverse = Step::Pending;
        }
        let withdrawal_settled = match self.withdraw {
            Step::Pending => false,
            Step::Done => self.refund == Step::Done,
            Step::NotSent | Step::Refused => true,
        };
        let deposit_settled = match self.deposit {
            Step::Pending => false,
            Step::Done => self.reverse == Step::Done,
            Step::NotSent | Step::Refused => true,
        };
        if withdrawal_settled && deposit_settled {
            effects.finish();
        }
    }
}

fn withdraw(account: String, transfer: String, amount: i64) -> AccountCommand {
    AccountCommand::Withdraw {
        account,
        transfer,
        amount,
    }
}

fn deposit(account: String, transfer: String, amount: i64) -> AccountCommand {
    AccountCommand::Deposit {
        account,
        transfer,
        amount,
    }
}

fn refund(account: String, transfer: String, amount: i64) -> AccountCommand {
    AccountCommand::Refund {
        account,
        transfer,
        amount,
    }
}

fn reverse(account: String, transfer: String, amount: i64) -> AccountCommand {
    AccountCommand::Reverse {
        account,
        transfer,
        amount,
    }
}

impl React for TransferSaga {
    fn correlate(event: &EventEnvelope<BankEvent>) -> Option<String> {
        match &event.payload {
            BankEvent::Transfer(_) => Some(event.stream_id.clone()),
            BankEvent::Account(
                AccountEvent::Withdrawn { transfer, .. }
                | AccountEvent::Deposited { transfer, .. }
                | AccountEvent::Refunded { transfer, .. }
                | AccountEvent::Reversed { transfer, .. },
            ) => Some(transfer.clone()),
            BankEvent::Account(AccountEvent::Opened { .. } | AccountEvent::Closed) => None,
        }
    }

    fn react(&mut self, event: &EventEnvelope<BankEvent>, effects: &mut Effects<BankCommand>) {
        let started = matches!(
            event.payload,
            BankEvent::Transfer(TransferEvent::TransferStarted { .. })
        );
        if self.transfer.is_empty() && !started {
            // Money moved by a transfer this process did not start (an atomic one):
            // not one of ours.
            effects.finish();
            return;
        }
        match &event.payload {
            BankEvent::Transfer(TransferEvent::TransferStarted {
                from,
                to,
                amount,
                deadline_ms,
            }) => {
                self.transfer = event.stream_id.clone();
                self.from.clone_from(from);
                self.to.clone_from(to);
                self.amount = *amount;
                self.withdraw = Step::Pending;
                effects.send(self.account(withdraw, from));
                effects.schedule(DEADLINE, Duration::from_millis(*deadline_ms));
            }
            BankEvent::Account(AccountEvent::Withdrawn { .. }) => {
                self.withdraw = Step::Done;
                if !self.failed {
                    self.deposit = Step::Pending;
                    effects.send(self.account(deposit, &self.to.clone()));
                }
            }
            BankEvent::Account(AccountEvent::Deposited { .. }) => {
                self.deposit = Step::Done;
                if !self.failed {
                    effects.send(BankCommand::Transfer(TransferCommand::Complete {
                        transfer: self.transfer.clone(),
                    }));
                }
            }
            BankEvent::Account(AccountEvent::Refunded { .. }) => self.refund = Step::Done,
            BankEvent::Account(AccountEvent::Reversed { .. }) => self.reverse = Step::Done,
            BankEvent::Transfer(TransferEvent::TransferCompleted) => effects.finish(),
            BankEvent::Transfer(TransferEvent::TransferFailed { .. }) => self.failed = true,
            BankEvent::Account(AccountEvent::Opened { .. } | AccountEvent::Closed) => {}
        }
        self.settle(effects);
    }

    fn on_timer(&mut self, _timer: &str, effects: &mut Effects<BankCommand>) {
        if !self.failed {
            effects.send(self.fail("the deadline passed"));
        }
    }

    fn on_refused(
        &mut self,
        command: &BankCommand,
        reason: &str,
        effects: &mut Effects<BankCommand>,
    ) {
        match command {
            BankCommand::Account(AccountCommand::Withdraw { .. }) => {
                self.withdraw = Step::Refused;
                effects.send(self.fail(format!("withdrawal refused: {reason}")));
            }
            BankCommand::Account(AccountCommand::Deposit { .. }) => {
                self.deposit = Step::Refused;
                effects.send(self.fail(format!("deposit refused: {reason}")));
            }
            // Complete refused: the transfer failed first (its event settles it); Fail
            // refused: it completed first. Refunds and reversals are never refused.
            _ => {}
        }
        self.settle(effects);
    }
}

/// Sends the process's commands to the two pipelines.
#[derive(Debug, Clone)]
pub struct Bank<S: ?Sized> {
    /// The accounts.
    pub accounts: Cqrs<Account, S>,
    /// The transfers.
    pub transfers: Cqrs<Transfer, S>,
}

impl<S: EventStore + Clone> Bank<S> {
    /// Both pipelines on one store.
    pub fn new(store: S) -> Self {
        Self {
            accounts: Cqrs::new(store.clone()),
            transfers: Cqrs::new(store),
        }
    }
}

impl<S: EventStore + ?Sized + 'static> Dispatch<BankCommand> for Bank<S> {
    async fn dispatch(
        &self,
        command: BankCommand,
        metadata: CommandMetadata,
    ) -> Result<(), Refusal> {
        match command {
            BankCommand::Account(command) => {
                Dispatch::dispatch(&self.accounts, command, metadata).await
            }
            BankCommand::Transfer(command) => {
                Dispatch::dispatch(&self.transfers, command, metadata).await
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// On PostgreSQL

/// The database used when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Connects to PostgreSQL and opens (creating it when needed) the store in `schema`.
///
/// # Errors
///
/// When the database cannot be reached or migrated.
pub async fn connect(url: &str, schema: &str) -> anyhow::Result<cqrs_postgres::PgEventStore> {
    use anyhow::Context as _;
    let pool = cqrs_postgres::sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let store = cqrs_postgres::PgEventStore::builder(pool)
        .schema(schema)
        .build()
        .context("invalid schema name")?;
    store.migrate().await.context("cannot migrate the store")?;
    Ok(store)
}

/// Starts the transfer process on `store`: a projection runner that owns it (or waits to,
/// while another process does), sending its commands to the account and transfer
/// pipelines of the same store.
///
/// # Errors
///
/// When the runner cannot register the process.
pub async fn run_saga(
    store: cqrs_postgres::PgEventStore,
) -> cqrs_postgres::Result<cqrs_postgres::PgProjectionRunner> {
    let tuning = cqrs_postgres::PgRunnerTuning::default()
        .poll_interval(Duration::from_millis(200))
        .claim_interval(Duration::from_millis(100));
    cqrs_postgres::PgProjectionRunner::builder(store.clone())
        .tuning(tuning)
        .process::<TransferSaga, _>(Bank::new(store))
        .start()
        .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cqrs_core::testing::ProcessFixture;

    use super::*;

    fn started() -> TransferEvent {
        TransferEvent::TransferStarted {
            from: "a".into(),
            to: "b".into(),
            amount: 30,
            deadline_ms: 1000,
        }
    }

    fn on_account(event: AccountEvent) -> BankEvent {
        BankEvent::Account(event)
    }

    fn withdrawn() -> BankEvent {
        on_account(AccountEvent::Withdrawn {
            transfer: "fixture-1".into(),
            amount: 30,
        })
    }

    fn deposited() -> BankEvent {
        on_account(AccountEvent::Deposited {
            transfer: "fixture-1".into(),
            amount: 30,
        })
    }

    fn to_account(command: AccountCommand) -> BankCommand {
        BankCommand::Account(command)
    }

    #[test]
    fn a_started_transfer_withdraws_and_sets_its_deadline() {
        ProcessFixture::<TransferSaga>::new()
            .when(BankEvent::Transfer(started()))
            .then_commands([to_account(withdraw("a".into(), "fixture-1".into(), 30))])
            .then_timers([(DEADLINE, Duration::from_secs(1))]);
    }

    #[test]
    fn money_moved_by_a_transfer_it_did_not_start_is_not_its_business() {
        ProcessFixture::<TransferSaga>::new()
            .when(withdrawn())
            .then_no_commands()
            .then_finished();
    }

    #[test]
    fn a_withdrawal_leads_to_the_deposit_then_completion() {
        ProcessFixture::<TransferSaga>::new()
            .given([BankEvent::Transfer(started())])
            .when(withdrawn())
            .then_commands([to_account(deposit("b".into(), "fixture-1".into(), 30))]);
        ProcessFixture::<TransferSaga>::new()
            .given([BankEvent::Transfer(started()), withdrawn()])
            .when(deposited())
            .then_commands([BankCommand::Transfer(TransferCommand::Complete {
                transfer: "fixture-1".into(),
            })]);
        ProcessFixture::<TransferSaga>::new()
            .given([BankEvent::Transfer(started()), withdrawn(), deposited()])
            .when(BankEvent::Transfer(TransferEvent::TransferCompleted))
            .then_no_commands()
            .then_timers([])
            .then_finished();
    }

    #[test]
    fn a_refused_withdrawal_fails_the_transfer_and_finishes_when_it_failed() {
        let outcome = ProcessFixture::<TransferSaga>::new()
            .given([BankEvent::Transfer(started())])
            .when_refused(
                to_account(withdraw("a".into(), "fixture-1".into(), 30)),
                "insufficient funds",
            );
        assert!(matches!(
            outcome.commands(),
            [BankCommand::Transfer(TransferCommand::Fail { .. })]
        ));
        ProcessFixture::<TransferSaga>::new()
            .given([BankEvent::Transfer(started())])
            .when_refused(
                to_account(withdraw("a".into(), "fixture-1".into(), 30)),
                "short",
            )
            .then_state(|s| assert_eq!(s.withdraw, Step::Refused));
    }

    #[test]
    fn a_refused_deposit_is_refunded() {
        let failed = BankEvent::Transfer(TransferEvent::TransferFailed {
            reason: "deposit refused".into(),
        });
        // The refund waits for the deposit's outcome; once refused and failed, refund.
        let saga = ProcessFixture::<TransferSaga>::new()
            .given([BankEvent::Transfer(started()), withdrawn()])
            .when_refused(
                to_account(deposit("b".into(), "fixture-1".into(), 30)),
                "closed",
            );
        assert!(matches!(
            saga.commands(),
            [BankCommand::Transfer(TransferCommand::Fail { .. })]
        ));
        ProcessFixture::<TransferSaga>::new()
            .given([BankEvent::Transfer(started()), withdrawn()])
            .when(failed)
            .then_no_commands();
    }

    #[test]
    fn the_deadline_fails_the_transfer_and_a_late_deposit_is_put_back_both_ways() {
        ProcessFixture::<TransferSaga>::new()
            .given([BankEvent::Transfer(started()), withdrawn()])
            .when_time_passes(Duration::from_secs(1))
            .then_commands([BankCommand::Transfer(TransferCommand::Fail {
                transfer: "fixture-1".into(),
                reason: "the deadline passed".into(),
            })]);
        let failed = BankEvent::Transfer(TransferEvent::TransferFailed {
            reason: "the deadline passed".into(),
        });
        ProcessFixture::<TransferSaga>::new()
            .given([BankEvent::Transfer(started()), withdrawn(), failed.clone()])
            .when(deposited())
            .then_commands([
                to_account(refund("a".into(), "fixture-1".into(), 30)),
                to_account(reverse("b".into(), "fixture-1".into(), 30)),
            ]);
        let refunded = on_account(AccountEvent::Refunded {
            transfer: "fixture-1".into(),
            amount: 30,
        });
        let reversed = on_account(AccountEvent::Reversed {
            transfer: "fixture-1".into(),
            amount: 30,
        });
        ProcessFixture::<TransferSaga>::new()
            .given([
                BankEvent::Transfer(started()),
                withdrawn(),
                failed,
                deposited(),
                refunded,
            ])
            .when(reversed)
            .then_no_commands()
            .then_finished();
    }
}
