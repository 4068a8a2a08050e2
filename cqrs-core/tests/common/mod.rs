//! A small test domain written against the bare traits: a ledger whose state depends on
//! the order of its events, so a lost, repeated or reordered event changes the result.

#![allow(
    dead_code,
    reason = "each test file uses a different part of the domain"
)]

use cqrs_core::{Aggregate, CodecError, Command, Event, EventType, SnapshotPolicy, codec};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LedgerEvent {
    Added { amount: i64, tag: String },
    Multiplied { factor: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LedgerCommand {
    Add {
        amount: i64,
        tag: String,
    },
    Multiply {
        factor: i64,
    },
    /// Adds then multiplies: two events from one command.
    AddThenMultiply {
        amount: i64,
        factor: i64,
    },
    /// Refused when the total is odd.
    AddIfEven {
        amount: i64,
    },
    /// Changes nothing.
    Noop,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LedgerError {
    #[error("the total is odd")]
    Odd,
    #[error("factor out of range")]
    BadFactor,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ledger {
    pub total: i64,
    pub events: u64,
    pub digest: u64,
    pub tags: Vec<String>,
}

impl Event for LedgerEvent {
    const TYPES: &'static [EventType] = &[
        EventType {
            name: "Added",
            version: 1,
        },
        EventType {
            name: "Multiplied",
            version: 1,
        },
    ];

    fn event_type(&self) -> &'static str {
        match self {
            Self::Added { .. } => "Added",
            Self::Multiplied { .. } => "Multiplied",
        }
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn encode(&self) -> Result<serde_json::Value, CodecError> {
        match self {
            Self::Added { amount, tag } => {
                codec::encode(&serde_json::json!({ "amount": amount, "tag": tag }))
            }
            Self::Multiplied { factor } => codec::encode(&serde_json::json!({ "factor": factor })),
        }
    }

    fn decode(
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<Self, CodecError> {
        #[derive(Deserialize)]
        struct AddedPayload {
            amount: i64,
            tag: String,
        }
        #[derive(Deserialize)]
        struct MultipliedPayload {
            factor: i64,
        }
        codec::check_known::<Self>(event_type, schema_version)?;
        if event_type == "Added" {
            let p: AddedPayload = codec::decode(event_type, schema_version, payload)?;
            Ok(Self::Added {
                amount: p.amount,
                tag: p.tag,
            })
        } else {
            let p: MultipliedPayload = codec::decode(event_type, schema_version, payload)?;
            Ok(Self::Multiplied { factor: p.factor })
        }
    }
}

impl Command for LedgerCommand {
    fn name(&self) -> &'static str {
        match self {
            Self::Add { .. } => "Add",
            Self::Multiply { .. } => "Multiply",
            Self::AddThenMultiply { .. } => "AddThenMultiply",
            Self::AddIfEven { .. } => "AddIfEven",
            Self::Noop => "Noop",
        }
    }
}

impl Aggregate for Ledger {
    const TYPE: &'static str = "ledger";
    type Command = LedgerCommand;
    type Event = LedgerEvent;
    type Error = LedgerError;
    type Services = ();

    fn snapshot_policy() -> SnapshotPolicy {
        SnapshotPolicy::Never
    }

    async fn handle_command(
        &self,
        command: &LedgerCommand,
        (): &(),
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let check = |factor: i64| {
            if (-3..=3).contains(&factor) {
                Ok(())
            } else {
                Err(LedgerError::BadFactor)
            }
        };
        Ok(match command {
            LedgerCommand::Add { amount, tag } => vec![LedgerEvent::Added {
                amount: *amount,
                tag: tag.clone(),
            }],
            LedgerCommand::Multiply { factor } => {
                check(*factor)?;
                vec![LedgerEvent::Multiplied { factor: *factor }]
            }
            LedgerCommand::AddThenMultiply { amount, factor } => {
                check(*factor)?;
                vec![
                    LedgerEvent::Added {
                        amount: *amount,
                        tag: String::new(),
                    },
                    LedgerEvent::Multiplied { factor: *factor },
                ]
            }
            LedgerCommand::AddIfEven { amount } => {
                if self.total % 2 != 0 {
                    return Err(LedgerError::Odd);
                }
                vec![LedgerEvent::Added {
                    amount: *amount,
                    tag: String::new(),
                }]
            }
            LedgerCommand::Noop => Vec::new(),
        })
    }

    fn apply_event(&mut self, event: &LedgerEvent) {
        self.events += 1;
        match event {
            LedgerEvent::Added { amount, tag } => {
                self.total = self.total.wrapping_add(*amount);
                self.digest = self
                    .digest
                    .wrapping_mul(31)
                    .wrapping_add(amount.unsigned_abs());
                if !tag.is_empty() {
                    self.tags.push(tag.clone());
                }
            }
            LedgerEvent::Multiplied { factor } => {
                self.total = self.total.wrapping_mul(*factor);
                self.digest = self
                    .digest
                    .wrapping_mul(37)
                    .wrapping_add(factor.unsigned_abs());
            }
        }
    }
}

/// The state a list of events folds to.
pub(crate) fn fold<'a>(events: impl IntoIterator<Item = &'a LedgerEvent>) -> Ledger {
    let mut state = Ledger::default();
    for event in events {
        state.apply_event(event);
    }
    state
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
