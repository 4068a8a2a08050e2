//! The domain the view suite writes: ledger entries of accounts held by owners, notes
//! the views ignore, and three documents folded from them.

use serde::{Deserialize, Serialize};

use crate::event::{CodecError, EventType, codec};
use crate::{Document, Event, EventEnvelope, EventFilter};

/// The stream type of the ledger's accounts.
pub(super) const ACCOUNT: &str = "suite_account";
/// A stream type of events no view wants.
pub(super) const NOTEBOOK: &str = "suite_notebook";

/// What the suite appends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum SuiteEvent {
    /// An entry on an account.
    Entered {
        /// The amount entered.
        amount: i64,
        /// Who holds the account (`""`: nobody).
        owner: String,
    },
    /// A note, which no view folds.
    Noted {
        /// What it says.
        text: String,
    },
}

impl Event for SuiteEvent {
    const TYPES: &'static [EventType] = &[
        EventType {
            name: "SuiteEntered",
            version: 1,
        },
        EventType {
            name: "SuiteNoted",
            version: 1,
        },
    ];

    fn event_type(&self) -> &'static str {
        match self {
            Self::Entered { .. } => "SuiteEntered",
            Self::Noted { .. } => "SuiteNoted",
        }
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn encode(&self) -> Result<serde_json::Value, CodecError> {
        codec::encode(self)
    }

    fn decode(
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<Self, CodecError> {
        codec::check_known::<Self>(event_type, schema_version)?;
        codec::decode(event_type, schema_version, payload)
    }
}

/// The entries of the ledger, the only events the views want.
fn entries() -> EventFilter {
    EventFilter::event_types(&SuiteEvent::TYPES[..1]).and_stream_type(ACCOUNT)
}

/// One document per account: every entry's stream version and amount, in the order
/// folded, so an entry skipped, applied twice or out of order shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// `(stream version, amount)` of each entry folded.
    pub entries: Vec<(u64, i64)>,
    /// The sum of the amounts.
    pub balance: i64,
    /// The owner named by the latest entry.
    pub owner: String,
    /// The latest entry, a nested object for queries to reach into.
    pub last: Last,
}

/// The latest entry of a [`Statement`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Last {
    /// Its stream version.
    pub version: u64,
    /// Its amount.
    pub amount: i64,
}

impl Document for Statement {
    const NAME: &'static str = "suite_statements";
    const INDEXES: &'static [&'static str] = &["owner", "balance", "last.amount"];
    type Event = SuiteEvent;

    fn filter() -> EventFilter {
        entries()
    }

    fn apply(&mut self, event: &EventEnvelope<SuiteEvent>) {
        if let SuiteEvent::Entered { amount, owner } = &event.payload {
            self.entries.push((event.stream_version, *amount));
            self.balance += amount;
            self.owner.clone_from(owner);
            self.last = Last {
                version: event.stream_version,
                amount: *amount,
            };
        }
    }
}

/// One document per owner, across the accounts they hold: keyed by a payload field, and
/// ignoring entries of nobody's account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holdings {
    /// The accounts entered, in the order first seen.
    pub accounts: Vec<String>,
    /// How many entries were folded.
    pub entries: u64,
    /// The sum of the amounts.
    pub total: i64,
}

impl Document for Holdings {
    const NAME: &'static str = "suite_holdings";
    type Event = SuiteEvent;

    fn filter() -> EventFilter {
        entries()
    }

    fn key(event: &EventEnvelope<SuiteEvent>) -> Option<String> {
        match &event.payload {
            SuiteEvent::Entered { owner, .. } if !owner.is_empty() => Some(owner.clone()),
            _ => None,
        }
    }

    fn apply(&mut self, event: &EventEnvelope<SuiteEvent>) {
        if let SuiteEvent::Entered { amount, .. } = &event.payload {
            if !self.accounts.contains(&event.stream_id) {
                self.accounts.push(event.stream_id.clone());
            }
            self.entries += 1;
            self.total += amount;
        }
    }
}

/// The stream type of the owners of accounts.
pub(super) const OWNER: &str = "suite_owner";

/// What the suite appends to an owner's stream: a second aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnerEvent {
    /// The owner's display name changed.
    Renamed {
        /// The new name.
        name: String,
    },
}

impl Event for OwnerEvent {
    const TYPES: &'static [EventType] = &[EventType {
        name: "SuiteOwnerRenamed",
        version: 1,
    }];

    fn event_type(&self) -> &'static str {
        "SuiteOwnerRenamed"
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn encode(&self) -> Result<serde_json::Value, CodecError> {
        codec::encode(self)
    }

    fn decode(
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<Self, CodecError> {
        codec::check_known::<Self>(event_type, schema_version)?;
        codec::decode(event_type, schema_version, payload)
    }
}

crate::event_union! {
    /// The events of both of the suite's aggregates: ledger accounts and their owners.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum LedgerFeed {
        /// An account's events.
        Account(SuiteEvent),
        /// An owner's events.
        Owner(OwnerEvent),
    }
}

/// One document per owner, folded from two aggregates: the owner's own stream (its
/// name) and the entries of the accounts it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owners {
    /// The latest name from the owner's stream.
    pub name: String,
    /// The accounts entered, sorted.
    pub accounts: std::collections::BTreeSet<String>,
    /// The sum of the amounts.
    pub total: i64,
}

impl Document for Owners {
    const NAME: &'static str = "suite_owners";
    type Event = LedgerFeed;

    fn key(event: &EventEnvelope<LedgerFeed>) -> Option<String> {
        match &event.payload {
            LedgerFeed::Account(SuiteEvent::Entered { owner, .. }) if !owner.is_empty() => {
                Some(owner.clone())
            }
            LedgerFeed::Owner(_) => Some(event.stream_id.clone()),
            LedgerFeed::Account(_) => None,
        }
    }

    fn apply(&mut self, event: &EventEnvelope<LedgerFeed>) {
        match &event.payload {
            LedgerFeed::Account(SuiteEvent::Entered { amount, .. }) => {
                self.accounts.insert(event.stream_id.clone());
                self.total += amount;
            }
            LedgerFeed::Owner(OwnerEvent::Renamed { name }) => self.name.clone_from(name),
            LedgerFeed::Account(SuiteEvent::Noted { .. }) => {}
        }
    }
}

/// Folds the same whatever the order of the streams.
impl SuiteDocument for Owners {}

/// The documents the suite keeps ([`Statement`], [`Holdings`], [`Owners`]), as a runner
/// needs them:
/// plain data that compares, clones and prints.
pub trait SuiteDocument: Document + Clone + PartialEq + std::fmt::Debug {
    /// The document with what depends on the order of events of different streams
    /// made independent of it: what two runners that fold concurrent appends in
    /// different orders (see [`DocumentRunner::folds_in_log_order`]) must agree on.
    ///
    /// [`DocumentRunner::folds_in_log_order`]: super::DocumentRunner::folds_in_log_order
    #[must_use]
    fn across_streams_unordered(&self) -> Self {
        self.clone()
    }
}

/// Each account's entries come from its one stream: their order is the stream's.
impl SuiteDocument for Statement {}

impl SuiteDocument for Holdings {
    /// The accounts, sorted: listed in the order first seen, they follow the order in
    /// which the runner folded the entries of different accounts.
    fn across_streams_unordered(&self) -> Self {
        let mut accounts = self.accounts.clone();
        accounts.sort();
        Self {
            accounts,
            ..self.clone()
        }
    }
}
