//! The bank-account domain: an aggregate with its commands and events, and a balance
//! read model.
//!
//! Shared by the `bank-account` program, its tests and the benchmark programs.

use std::collections::BTreeMap;
use std::convert::Infallible;

use cqrs_core::prelude::*;
use cqrs_core::{Apply, Handle, Project};
use serde::{Deserialize, Serialize};

/// Something that happened to an account.
#[derive(Debug, Clone, PartialEq, Eq, Event)]
pub enum AccountEvent {
    /// The account was opened.
    Opened {
        /// Who owns it.
        owner: String,
    },
    /// Money came in.
    Deposited {
        /// How much, in cents.
        amount: u64,
    },
    /// Money went out.
    Withdrawn {
        /// How much, in cents.
        amount: u64,
    },
}

/// What a client can ask of an account.
#[derive(Debug, Clone, PartialEq, Eq, Command)]
pub enum AccountCommand {
    /// Open the account.
    Open {
        /// Who will own it.
        owner: String,
    },
    /// Put money in.
    Deposit {
        /// How much, in cents.
        amount: u64,
    },
    /// Take money out.
    Withdraw {
        /// How much, in cents.
        amount: u64,
    },
}

/// Why an account refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// Opening an account that is already open.
    #[error("the account is already open")]
    AlreadyOpen,
    /// Any command but `Open` on an account that was never opened.
    #[error("the account is not open")]
    NotOpen,
    /// A deposit or withdrawal of zero.
    #[error("the amount must be positive")]
    ZeroAmount,
    /// A withdrawal larger than the balance.
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds {
        /// The balance at the time.
        balance: u64,
        /// The amount asked for.
        requested: u64,
    },
}

/// A bank account: the consistency boundary that decides on its commands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Aggregate)]
#[cqrs(
    name = "bank_account",
    command = AccountCommand,
    event = AccountEvent,
    error = AccountError
)]
pub struct BankAccount {
    /// Whether the account has been opened.
    pub open: bool,
    /// The balance in cents.
    pub balance: u64,
}

impl Handle<AccountCommand> for BankAccount {
    async fn handle(
        &self,
        command: &AccountCommand,
        (): &(),
    ) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { owner } => {
                if self.open {
                    return Err(AccountError::AlreadyOpen);
                }
                Ok(vec![AccountEvent::Opened {
                    owner: owner.clone(),
                }])
            }
            AccountCommand::Deposit { amount } => {
                self.check_movement(*amount)?;
                Ok(vec![AccountEvent::Deposited { amount: *amount }])
            }
            AccountCommand::Withdraw { amount } => {
                self.check_movement(*amount)?;
                if *amount > self.balance {
                    return Err(AccountError::InsufficientFunds {
                        balance: self.balance,
                        requested: *amount,
                    });
                }
                Ok(vec![AccountEvent::Withdrawn { amount: *amount }])
            }
        }
    }
}

impl Apply<AccountEvent> for BankAccount {
    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }
}

impl BankAccount {
    fn check_movement(&self, amount: u64) -> Result<(), AccountError> {
        if !self.open {
            return Err(AccountError::NotOpen);
        }
        if amount == 0 {
            return Err(AccountError::ZeroAmount);
        }
        Ok(())
    }
}

/// One row of the balances read model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BalanceRow {
    /// The account's owner.
    pub owner: String,
    /// The balance in cents.
    pub balance: u64,
    /// How many deposits and withdrawals the account has seen.
    pub movements: u64,
}

/// Read model: every account's owner and balance, by account id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Projection)]
#[cqrs(name = "balances", event = AccountEvent, aggregate = BankAccount)]
pub struct Balances {
    /// The rows, by account id.
    pub accounts: BTreeMap<String, BalanceRow>,
}

impl Project for Balances {
    async fn project(
        &mut self,
        (): &mut (),
        event: &EventEnvelope<AccountEvent>,
    ) -> Result<(), Infallible> {
        let row = self.accounts.entry(event.stream_id.clone()).or_default();
        match &event.payload {
            AccountEvent::Opened { owner } => row.owner.clone_from(owner),
            AccountEvent::Deposited { amount } => {
                row.balance += amount;
                row.movements += 1;
            }
            AccountEvent::Withdrawn { amount } => {
                row.balance -= amount;
                row.movements += 1;
            }
        }
        Ok(())
    }
}

/// Read model: one document per account, written once and run by every runner: in
/// memory as `cqrs_core::memory::Documents<AccountSummary>`, on PostgreSQL as
/// `cqrs_postgres::PgDocumentView<AccountSummary>` (under the projection runner, or
/// inline in each append's transaction).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSummary {
    /// The account's owner.
    pub owner: String,
    /// The balance in cents.
    pub balance: u64,
    /// How many deposits and withdrawals the account has seen.
    pub movements: u64,
}

impl Document for AccountSummary {
    const NAME: &'static str = "account_summaries";
    type Event = AccountEvent;

    fn apply(&mut self, event: &EventEnvelope<AccountEvent>) {
        match &event.payload {
            AccountEvent::Opened { owner } => self.owner.clone_from(owner),
            AccountEvent::Deposited { amount } => {
                self.balance += amount;
                self.movements += 1;
            }
            AccountEvent::Withdrawn { amount } => {
                self.balance -= amount;
                self.movements += 1;
            }
        }
    }
}

/// The guide's pages, compiled and run as doc tests (`cargo test --doc`), so that every
/// code block in `docs/` builds against the current API.
#[cfg(doctest)]
mod guide {
    #[doc = include_str!("../../../README.md")]
    struct Readme;
    #[doc = include_str!("../../../docs/getting-started.md")]
    struct GettingStarted;
    #[doc = include_str!("../../../docs/aggregates.md")]
    struct Aggregates;
    #[doc = include_str!("../../../docs/commands.md")]
    struct Commands;
    #[doc = include_str!("../../../docs/schema-evolution.md")]
    struct SchemaEvolution;
    #[doc = include_str!("../../../docs/testing.md")]
    struct Testing;
    #[doc = include_str!("../../../docs/backends.md")]
    struct Backends;
    #[doc = include_str!("../../../docs/concepts.md")]
    struct Concepts;
    #[doc = include_str!("../../../docs/contributing.md")]
    struct Contributing;
    #[doc = include_str!("../../../docs/projections.md")]
    struct Projections;
    #[doc = include_str!("../../../docs/rules-across-aggregates.md")]
    struct RulesAcrossAggregates;
    #[doc = include_str!("../../../docs/between-services.md")]
    struct BetweenServices;
    #[doc = include_str!("../../../docs/operations.md")]
    struct Operations;
    #[doc = include_str!("../../../docs/postgres.md")]
    struct Postgres;
    #[doc = include_str!("../../../docs/performance.md")]
    struct Performance;
    #[doc = include_str!("../../../docs/README.md")]
    struct Guide;
}
