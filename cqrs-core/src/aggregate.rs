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
/// - [`handle_command`](Aggregate::handle_command) decides: given the current state and a
///   command, it returns the events to record or a domain error. It does no storage I/O
///   (lookups go through [`Services`](Aggregate::Services)), so the pipeline may run it
///   again after a concurrency conflict.
/// - [`apply_event`](Aggregate::apply_event) folds one event into the state. It cannot
///   fail: events are facts.
///
/// Usually derived with `#[derive(Aggregate)]`, which fills in the constants and
/// associated types from `#[cqrs(...)]` and forwards the two functions to the state's
/// [`Handle`] and [`Apply`] impls, where the logic is written. The names differ from
/// theirs (`handle`, `apply`), so both sets are plain methods with every trait in scope.
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
    /// Read-only collaborators `handle_command` may consult (clocks, price lists, remote
    /// lookups). Use `()` when there are none.
    type Services: Send + Sync + 'static;

    /// How often the pipeline snapshots this aggregate, unless configured otherwise.
    fn snapshot_policy() -> SnapshotPolicy {
        SnapshotPolicy::Never
    }

    /// Decides on a command: the events to record, or why not.
    fn handle_command(
        &self,
        command: &Self::Command,
        services: &Self::Services,
    ) -> impl Future<Output = Result<Vec<Self::Event>, Self::Error>> + Send;

    /// Folds an event into the state.
    fn apply_event(&mut self, event: &Self::Event);
}

/// How an aggregate decides on one command type: the business logic behind
/// [`Aggregate::handle_command`].
///
/// Write it as an `async fn` (a plain body is fine when there is nothing to await). It
/// must not do storage I/O: the pipeline may run it again after a concurrency conflict.
///
/// `#[derive(Aggregate)]` forwards [`Aggregate::handle_command`] to
/// `Handle<Self::Command>`. It is also the extension point for commands written as
/// separate structs: each gets its own `impl Handle<ThatCommand> for TheAggregate`, and a
/// command enum derived with `#[cqrs(aggregate = TheAggregate)]` routes each variant to
/// them.
///
/// With the prelude in scope, `state.handle(&command, &services)` calls this trait and
/// `state.handle_command(..)` the [`Aggregate`] method the pipeline calls.
///
/// ```
/// use cqrs_core::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// # enum CounterEvent { Incremented { by: u64 } }
/// # #[derive(Debug, Command)]
/// # enum CounterCommand { Increment { by: u64 } }
/// # #[derive(Debug, thiserror::Error)]
/// # #[error("counter overflow")]
/// # struct Overflow;
/// # #[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
/// # #[cqrs(command = CounterCommand, event = CounterEvent, error = Overflow)]
/// # struct Counter { value: u64 }
/// # impl cqrs_core::Apply<CounterEvent> for Counter {
/// #     fn apply(&mut self, event: &CounterEvent) {
/// #         let CounterEvent::Incremented { by } = event;
/// #         self.value += by;
/// #     }
/// # }
///
/// impl Handle<CounterCommand> for Counter {
///     async fn handle(
///         &self,
///         command: &CounterCommand,
///         _: &(),
///     ) -> Result<Vec<CounterEvent>, Overflow> {
///         let CounterCommand::Increment { by } = command;
///         self.value.checked_add(*by).ok_or(Overflow)?;
///         Ok(vec![CounterEvent::Incremented { by: *by }])
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let full = Counter { value: u64::MAX };
/// let refused = full.handle(&CounterCommand::Increment { by: 1 }, &()).await;
/// assert!(refused.is_err());
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not handle `{C}`",
    note = "write `impl cqrs_core::Handle<{C}> for {Self}` with the command's business logic"
)]
pub trait Handle<C>: Aggregate {
    /// Decides on a command: the events to record, or why not.
    fn handle(
        &self,
        command: &C,
        services: &Self::Services,
    ) -> impl Future<Output = Result<Vec<Self::Event>, Self::Error>> + Send;
}

/// How an aggregate folds one event type into its state: the logic behind
/// [`Aggregate::apply_event`], which `#[derive(Aggregate)]` forwards to `Apply<Self::Event>`.
/// It cannot fail: events are facts.
///
/// See [`Handle`] for a complete aggregate.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not apply `{E}`",
    note = "write `impl cqrs_core::Apply<{E}> for {Self}` folding the event into the state"
)]
pub trait Apply<E>: Aggregate {
    /// Folds an event into the state.
    fn apply(&mut self, event: &E);
}
