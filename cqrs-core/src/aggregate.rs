use std::fmt::Debug;
use std::future::Future;
use std::num::NonZeroU64;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Command, Event};

/// When the command pipeline writes a snapshot of an aggregate's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotPolicy {
    /// Never: state is always rebuilt from the full stream.
    #[default]
    Never,
    /// Whenever the stream version crosses a multiple of N.
    Every(NonZeroU64),
}

impl SnapshotPolicy {
    /// A snapshot every `n` events; `0` means never.
    #[must_use]
    pub const fn every(n: u64) -> Self {
        match NonZeroU64::new(n) {
            Some(n) => Self::Every(n),
            None => Self::Never,
        }
    }

    /// Whether an append that moved the stream from `before` to `after` is due one.
    #[must_use]
    pub fn is_due(self, before: u64, after: u64) -> bool {
        match self {
            Self::Never => false,
            Self::Every(n) => after / n.get() > before / n.get(),
        }
    }
}

/// A consistency boundary: the state that decides commands, rebuilt from its own events.
///
/// The business logic is two functions and nothing else:
///
/// - [`handle`](Aggregate::handle) decides: given the current state and a command, it
///   returns the events to record or a domain error. It does no storage I/O (lookups go
///   through [`Services`](Aggregate::Services)), so the pipeline may run it again after
///   a concurrency conflict.
/// - [`apply`](Aggregate::apply) folds one event into the state. It cannot fail: events
///   are facts.
///
/// Usually derived with `#[derive(Aggregate)]`, which fills in the constants and
/// associated types from `#[cqrs(...)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an aggregate",
    note = "add `#[derive(Aggregate)]` to `{Self}`, or implement `cqrs_core::Aggregate` for it"
)]
pub trait Aggregate:
    Default + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The stored stream type, e.g. `"bank_account"`. Renaming it orphans stored streams.
    const TYPE: &'static str;

    /// Version of the state's shape. Bump it when the state's serialised form changes:
    /// snapshots of another state version are ignored and state is rebuilt from events.
    const STATE_VERSION: u32 = 1;

    /// The commands this aggregate decides on.
    type Command: Command;
    /// The events it records.
    type Event: Event;
    /// Why it refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Read-only collaborators `handle` may consult (clocks, price lists, remote
    /// lookups). Use `()` when there are none.
    type Services: Send + Sync + 'static;

    /// How often the pipeline snapshots this aggregate, unless configured otherwise.
    fn snapshot_policy() -> SnapshotPolicy {
        SnapshotPolicy::Never
    }

    /// Decides on a command: the events to record, or why not.
    fn handle(
        &self,
        command: &Self::Command,
        services: &Self::Services,
    ) -> impl Future<Output = Result<Vec<Self::Event>, Self::Error>> + Send;

    /// Folds an event into the state.
    fn apply(&mut self, event: &Self::Event);
}
