//! The bank-account domain written against the bare traits, without the derives, kept
//! beside the derived domain in `src/lib.rs` so that the comparison between the two
//! stays honest: both must store byte-for-byte the same events and reach the same states.

use cqrs_core::memory::{MemoryEventStore, Projector};
use cqrs_core::{Cqrs, EventFilter, EventStore, Position};
use example_bank_account as derived;

#[allow(
    unreachable_pub,
    reason = "kept exactly as a library module would be written"
)]
mod bare {
    use std::collections::BTreeMap;
    use std::convert::Infallible;

    use cqrs_core::{
        Aggregate, CodecError, Command, Event, EventEnvelope, EventType, Projection, codec,
    };
    use serde::{Deserialize, Serialize};

    /// Something that happened to an account.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    #[derive(Debug, Clone, PartialEq, Eq)]
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
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct BankAccount {
        /// Whether the account has been opened.
        pub open: bool,
        /// The balance in cents.
        pub balance: u64,
    }

    impl Event for AccountEvent {
        const TYPES: &'static [EventType] = &[
            EventType {
                name: "Opened",
                version: 1,
            },
            EventType {
                name: "Deposited",
                version: 1,
            },
            EventType {
                name: "Withdrawn",
                version: 1,
            },
        ];

        fn event_type(&self) -> &'static str {
            match self {
                Self::Opened { .. } => "Opened",
                Self::Deposited { .. } => "Deposited",
                Self::Withdrawn { .. } => "Withdrawn",
            }
        }

        fn schema_version(&self) -> u32 {
            1
        }

        fn encode(&self) -> Result<serde_json::Value, CodecError> {
            match self {
                Self::Opened { owner } => codec::encode(&serde_json::json!({ "owner": owner })),
                Self::Deposited { amount } | Self::Withdrawn { amount } => {
                    codec::encode(&serde_json::json!({ "amount": amount }))
                }
            }
        }

        fn decode(
            event_type: &str,
            schema_version: u32,
            payload: serde_json::Value,
        ) -> Result<Self, CodecError> {
            #[derive(Deserialize)]
            struct Owner {
                owner: String,
            }
            #[derive(Deserialize)]
            struct Amount {
                amount: u64,
            }
            codec::check_known::<Self>(event_type, schema_version)?;
            Ok(match event_type {
                "Opened" => {
                    let Owner { owner } = codec::decode(event_type, schema_version, payload)?;
                    Self::Opened { owner }
                }
                "Deposited" => {
                    let Amount { amount } = codec::decode(event_type, schema_version, payload)?;
                    Self::Deposited { amount }
                }
                _ => {
                    let Amount { amount } = codec::decode(event_type, schema_version, payload)?;
                    Self::Withdrawn { amount }
                }
            })
        }
    }

    impl Command for AccountCommand {
        fn name(&self) -> &'static str {
            match self {
                Self::Open { .. } => "Open",
                Self::Deposit { .. } => "Deposit",
                Self::Withdraw { .. } => "Withdraw",
            }
        }
    }

    impl Aggregate for BankAccount {
        const TYPE: &'static str = "bank_account";
        type Command = AccountCommand;
        type Event = AccountEvent;
        type Error = AccountError;
        type Services = ();

        async fn handle_command(
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

        fn apply_event(&mut self, event: &AccountEvent) {
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
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Balances {
        /// The rows, by account id.
        pub accounts: BTreeMap<String, BalanceRow>,
    }

    impl Projection for Balances {
        const NAME: &'static str = "balances";
        type Event = AccountEvent;
        type Context = ();
        type Error = Infallible;

        fn filter() -> cqrs_core::EventFilter {
            cqrs_core::EventFilter::event_types(AccountEvent::TYPES)
                .and_stream_type(BankAccount::TYPE)
        }

        async fn handle(
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
}

fn script() -> Vec<(&'static str, derived::AccountCommand, bare::AccountCommand)> {
    use bare::AccountCommand as B;
    use derived::AccountCommand as D;
    vec![
        (
            "a",
            D::Open {
                owner: "Ada".into(),
            },
            B::Open {
                owner: "Ada".into(),
            },
        ),
        ("a", D::Deposit { amount: 500 }, B::Deposit { amount: 500 }),
        ("b", D::Deposit { amount: 5 }, B::Deposit { amount: 5 }),
        (
            "b",
            D::Open {
                owner: "Bob".into(),
            },
            B::Open {
                owner: "Bob".into(),
            },
        ),
        (
            "a",
            D::Withdraw { amount: 200 },
            B::Withdraw { amount: 200 },
        ),
        (
            "a",
            D::Withdraw { amount: 900 },
            B::Withdraw { amount: 900 },
        ),
        ("b", D::Deposit { amount: 0 }, B::Deposit { amount: 0 }),
        (
            "a",
            D::Open {
                owner: "Eve".into(),
            },
            B::Open {
                owner: "Eve".into(),
            },
        ),
        ("b", D::Deposit { amount: 70 }, B::Deposit { amount: 70 }),
    ]
}

#[tokio::test]
async fn derived_and_bare_domains_store_the_same_events_and_decide_alike() {
    let (derived_store, bare_store) = (MemoryEventStore::new(), MemoryEventStore::new());
    let derived_cqrs = Cqrs::<derived::BankAccount, _>::new(derived_store.clone());
    let bare_cqrs = Cqrs::<bare::BankAccount, _>::new(bare_store.clone());
    for (id, derived_command, bare_command) in script() {
        let d = derived_cqrs.execute(id, derived_command).await;
        let b = bare_cqrs.execute(id, bare_command).await;
        match (d, b) {
            (Ok(d), Ok(b)) => assert_eq!(d.stream_version, b.stream_version),
            (Err(d), Err(b)) => assert_eq!(
                d.rejection().map(ToString::to_string),
                b.rejection().map(ToString::to_string)
            ),
            (d, b) => panic!("the domains disagree: {d:?} vs {b:?}"),
        }
    }

    let stored = |store: MemoryEventStore| async move {
        store
            .read_all(Position::START, 1_000, &EventFilter::all())
            .await
            .expect("read_all")
            .into_iter()
            .map(|e| {
                (
                    e.stream_type,
                    e.stream_id,
                    e.event_type,
                    e.schema_version,
                    e.payload,
                )
            })
            .collect::<Vec<_>>()
    };
    let derived_log = stored(derived_store.clone()).await;
    assert_eq!(derived_log.len(), 5);
    assert_eq!(
        derived_log,
        stored(bare_store.clone()).await,
        "same stored form"
    );

    for id in ["a", "b"] {
        let d = derived_cqrs.load(id).await.expect("load").state;
        let b = bare_cqrs.load(id).await.expect("load").state;
        assert_eq!(
            serde_json::to_value(&d).expect("state"),
            serde_json::to_value(&b).expect("state")
        );
    }

    let derived_view = Projector::new(derived_store, derived::Balances::default());
    let bare_view = Projector::new(bare_store, bare::Balances::default());
    derived_view.catch_up().await.expect("project");
    bare_view.catch_up().await.expect("project");
    let rows = |accounts: Vec<(String, String, u64, u64)>| accounts;
    assert_eq!(
        rows(
            derived_view
                .read(|v| v
                    .accounts
                    .iter()
                    .map(|(k, r)| (k.clone(), r.owner.clone(), r.balance, r.movements))
                    .collect())
                .await
        ),
        rows(
            bare_view
                .read(|v| v
                    .accounts
                    .iter()
                    .map(|(k, r)| (k.clone(), r.owner.clone(), r.balance, r.movements))
                    .collect())
                .await
        ),
    );
}
