//! Every derive, under strict lints, beside user types named like the std items generated
//! code might otherwise pick up by accident. Compiling this file is the test; the tests
//! below also run the derived types through the pipeline and a projector.
#![cfg(feature = "derive")]
#![deny(warnings, unused_qualifications, missing_docs)]

use cqrs_core::prelude::*;
use serde::{Deserialize, Serialize};

/// Shadows `core::result::Result`.
#[derive(Debug)]
pub struct Result;
/// Shadows `core::option::Option`.
#[derive(Debug)]
pub struct Option;
/// Shadows `std::boxed::Box`.
#[derive(Debug)]
pub struct Box;
/// Shadows `std::vec::Vec`.
#[derive(Debug)]
pub struct Vec;
/// Shadows the `Ok` variant.
#[derive(Debug)]
pub struct Ok;
/// Shadows the `Err` variant.
#[derive(Debug)]
pub struct Err;
/// Shadows the `Some` variant.
#[derive(Debug)]
pub struct Some;
/// Shadows the `None` variant.
#[derive(Debug)]
pub struct None;
/// Shadows `core::future::Future`.
#[derive(Debug)]
pub struct Future;
/// Shadows `core::marker::Send`.
#[derive(Debug)]
pub struct Send;
/// Shadows `serde_json::Value`.
#[derive(Debug)]
pub struct Value;

type Res<T, E> = ::core::result::Result<T, E>;
type List<T> = ::std::vec::Vec<T>;

/// The events of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
pub enum AccountEvent {
    /// Opened.
    Opened {
        /// Owner.
        owner: String,
    },
    /// Money in.
    Deposited {
        /// Amount.
        amount: u64,
    },
    /// Money out (renamed; version 2 added the reference).
    #[cqrs(name = "MoneyWithdrawn", version = 2, upcast(v1 = withdrawn_v1))]
    Withdrawn {
        /// Amount.
        amount: u64,
        /// Reference.
        reference: String,
    },
    /// A newtype variant.
    Noted(String),
    /// A unit variant.
    Closed,
}

/// Upcasts `MoneyWithdrawn` v1.
///
/// # Errors
///
/// Never.
pub fn withdrawn_v1(
    mut payload: serde_json::Value,
) -> ::core::result::Result<serde_json::Value, ::std::string::String> {
    payload["reference"] = serde_json::json!("");
    ::core::result::Result::Ok(payload)
}

/// A struct event.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[cqrs(name = "Pinged")]
pub struct Ping;

/// Events whose payloads the enum's and the variants' `#[serde]` attributes shape.
#[derive(Debug, Clone, PartialEq, Event)]
#[serde(rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum ProfileEvent {
    /// Renamed by the enum's rule.
    Registered {
        /// First name.
        first_name: String,
    },
    /// Renamed by its own rule.
    #[serde(rename_all(serialize = "kebab-case"))]
    Moved {
        /// Street.
        street_name: String,
    },
    /// Without fields, so it reads `{}` only.
    Closed,
}

/// Opens an account.
#[derive(Debug, Command)]
pub struct Open {
    /// Account id.
    #[cqrs(id)]
    pub id: String,
    /// Owner.
    pub owner: String,
}

/// Deposits money.
#[derive(Debug, Command)]
#[cqrs(name = "deposit")]
pub struct Deposit {
    /// Account id.
    #[cqrs(id)]
    pub id: String,
    /// Amount.
    pub amount: u64,
}

/// Withdraws money.
#[derive(Debug, Command)]
pub struct Withdraw {
    /// Account id.
    #[cqrs(id)]
    pub id: String,
    /// Amount.
    pub amount: u64,
}

/// Every account command, each handled by its own `Handle` impl.
#[derive(Debug, Command)]
#[cqrs(aggregate = Account)]
pub enum AccountCommand {
    /// Open.
    Open(Open),
    /// Deposit.
    Deposit(Deposit),
    /// Withdraw.
    #[cqrs(name = "withdraw")]
    Withdraw(Withdraw),
}

/// Why an account refuses.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// Not enough money.
    #[error("insufficient funds")]
    InsufficientFunds,
    /// Opened twice, or used before opening.
    #[error("wrong state")]
    WrongState,
}

/// An account.
#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[cqrs(
    name = "account",
    command = AccountCommand,
    event = AccountEvent,
    error = AccountError,
    snapshot_every = 100,
    state_version = 2
)]
pub struct Account {
    open: bool,
    balance: u64,
}

impl Handle<Open> for Account {
    async fn handle(&self, command: &Open, _: &()) -> Res<List<AccountEvent>, AccountError> {
        if self.open {
            return ::core::result::Result::Err(AccountError::WrongState);
        }
        ::core::result::Result::Ok(vec![AccountEvent::Opened {
            owner: command.owner.clone(),
        }])
    }
}

impl Handle<Deposit> for Account {
    async fn handle(&self, command: &Deposit, _: &()) -> Res<List<AccountEvent>, AccountError> {
        if !self.open {
            return ::core::result::Result::Err(AccountError::WrongState);
        }
        ::core::result::Result::Ok(vec![AccountEvent::Deposited {
            amount: command.amount,
        }])
    }
}

impl Handle<Withdraw> for Account {
    async fn handle(&self, command: &Withdraw, _: &()) -> Res<List<AccountEvent>, AccountError> {
        if self.balance < command.amount {
            return ::core::result::Result::Err(AccountError::InsufficientFunds);
        }
        ::core::result::Result::Ok(vec![AccountEvent::Withdrawn {
            amount: command.amount,
            reference: "atm".to_owned(),
        }])
    }
}

impl Apply<AccountEvent> for Account {
    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount, .. } => self.balance -= amount,
            AccountEvent::Noted(_) => {}
            AccountEvent::Closed => self.open = false,
        }
    }
}

/// A counter whose one command enum is handled in one place, with services.
#[derive(Debug, Command)]
pub enum CounterCommand {
    /// Adds the configured step.
    Bump {
        /// Counter id.
        #[cqrs(id)]
        id: String,
    },
}

/// The counter's events.
#[derive(Debug, Clone, Event)]
pub enum CounterEvent {
    /// Bumped.
    Bumped {
        /// By how much.
        by: u64,
    },
}

/// What the counter consults.
#[derive(Debug, Default)]
pub struct Step(pub u64);

/// A counter.
#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[cqrs(
    command = CounterCommand,
    event = CounterEvent,
    error = ::core::convert::Infallible,
    services = Step
)]
pub struct Counter {
    value: u64,
}

impl Handle<CounterCommand> for Counter {
    async fn handle(
        &self,
        command: &CounterCommand,
        step: &Step,
    ) -> Res<List<CounterEvent>, ::core::convert::Infallible> {
        let CounterCommand::Bump { .. } = command;
        ::core::result::Result::Ok(vec![CounterEvent::Bumped { by: step.0 }])
    }
}

impl Apply<CounterEvent> for Counter {
    fn apply(&mut self, event: &CounterEvent) {
        let CounterEvent::Bumped { by } = event;
        self.value += by;
    }
}

/// Balances per account.
#[derive(Debug, Default, Projection)]
#[cqrs(name = "balances", version = 2, event = AccountEvent, aggregate = Account)]
pub struct Balances(::std::collections::BTreeMap<String, u64>);

impl Project for Balances {
    async fn project(
        &mut self,
        _: &mut (),
        event: &EventEnvelope<AccountEvent>,
    ) -> Res<(), ::core::convert::Infallible> {
        let balance = self.0.entry(event.stream_id.clone()).or_default();
        match &event.payload {
            AccountEvent::Deposited { amount } => *balance += amount,
            AccountEvent::Withdrawn { amount, .. } => *balance -= amount,
            _ => {}
        }
        ::core::result::Result::Ok(())
    }
}

#[test]
fn derived_constants() {
    assert_eq!(<Account as Aggregate>::TYPE, "account");
    assert_eq!(<Account as Aggregate>::STATE_VERSION, 2);
    assert_eq!(Account::snapshot_policy(), SnapshotPolicy::every(100));
    assert_eq!(<Counter as Aggregate>::TYPE, "Counter");
    assert_eq!(Counter::snapshot_policy(), SnapshotPolicy::Never);
    assert_eq!(<Balances as Projection>::NAME, "balances");
    assert_eq!(<Balances as Projection>::VERSION, 2);
    let filter = Balances::filter();
    assert_eq!(filter.stream_types, ["account"]);
    assert!(filter.matches("account", "MoneyWithdrawn"));
    assert!(!filter.matches("account", "Withdrawn"));
    assert_eq!(Ping::TYPES[0].name, "Pinged");
    assert_eq!(
        AccountEvent::Noted("x".to_owned()).event_type(),
        AccountEvent::Closed.event_type().replace("Closed", "Noted")
    );
    assert!(withdrawn_v1(serde_json::json!({})).is_ok());
    assert_eq!(
        ProfileEvent::TYPES
            .iter()
            .map(|known| known.name)
            .collect::<List<_>>(),
        ["Registered", "Moved", "Closed"]
    );
    let _unused = (
        Result, Option, Box, Vec, Ok, Err, Some, None, Future, Send, Value,
    );
}

#[tokio::test]
async fn derived_aggregate_runs_through_the_pipeline()
-> Res<(), ::std::boxed::Box<dyn ::std::error::Error>> {
    let store = MemoryEventStore::new();
    let accounts = Cqrs::<Account, _>::new(store.clone());
    let open = AccountCommand::Open(Open {
        id: "acc-1".to_owned(),
        owner: "ada".to_owned(),
    });
    assert_eq!(open.name(), "Open");
    accounts.dispatch(open).await?;
    let deposit = AccountCommand::Deposit(Deposit {
        id: "acc-1".to_owned(),
        amount: 10,
    });
    assert_eq!(
        (deposit.name(), deposit.aggregate_id()),
        ("deposit", ::core::option::Option::Some("acc-1"))
    );
    accounts.dispatch(deposit).await?;
    let withdraw = |amount| {
        AccountCommand::Withdraw(Withdraw {
            id: "acc-1".to_owned(),
            amount,
        })
    };
    assert_eq!(withdraw(1).name(), "withdraw");
    let refused = accounts.dispatch(withdraw(11)).await;
    assert!(matches!(
        refused.as_ref().map_err(CommandError::rejection),
        ::core::result::Result::Err(::core::option::Option::Some(
            AccountError::InsufficientFunds
        ))
    ));
    accounts.dispatch(withdraw(4)).await?;

    let balances = Projector::new(store.clone(), Balances::default());
    balances.catch_up().await?;
    assert_eq!(
        balances.read(|view| view.0.get("acc-1").copied()).await,
        ::core::option::Option::Some(6)
    );

    let counters = Cqrs::<Counter, _>::builder(store).services(Step(3)).build();
    counters
        .dispatch(CounterCommand::Bump { id: "c".to_owned() })
        .await?;
    counters
        .dispatch(CounterCommand::Bump { id: "c".to_owned() })
        .await?;
    assert_eq!(counters.load("c").await?.state.value, 6);
    ::core::result::Result::Ok(())
}
