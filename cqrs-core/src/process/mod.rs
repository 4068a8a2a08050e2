//! Process managers (sagas): rules that take several aggregates, one step at a time,
//! driven by the events they record.
//!
//! A process manager is a type with a state of its own, one instance per correlation
//! key (a transfer id, an order id). It reacts to events from any streams, to its own
//! timers and to the refusal of a command it sent, and each reaction says what to do
//! next through [`Effects`]: commands to send, timers to schedule or cancel, the end of
//! the process. A runner keeps the instances, and makes each reaction happen exactly
//! once:
//!
//! - the instance's new state, the commands to send and the timers are recorded in one
//!   commit with the position of the event (or the removal of the timer, or of the
//!   refused command) that caused them, so a crash replays the reaction or nothing;
//! - every command goes out with a command id derived from its cause
//!   ([`command_id`]), so sending it again after a crash is recognised by the command
//!   pipeline as the same command, and appends nothing twice;
//! - a timer fires once: its removal commits with the reaction to it.
//!
//! An instance is event-sourced: each reaction records a [`Step`] (what it reacted to:
//! the event as stored, the timer, the refused command; and what it decided), and its
//! state is the fold of those steps ([`replay`]), as an aggregate's state is the fold of
//! its events. Runners keep the state reached as a snapshot beside the history.
//!
//! Runners: [`memory::ProcessRunner`](crate::memory::ProcessRunner) (in memory, with a
//! [`ManualClock`] for tests) and `cqrs_postgres`'s, which keeps instances, commands
//! and timers in PostgreSQL beside the log, with one owner at a time across processes.
//! Given/when/then tests: `cqrs_core::testing::ProcessFixture`.
//!
//! Usually derived: `#[derive(ProcessManager)]` with
//! `#[cqrs(name = "...", event = E, command = C)]` fills in [`ProcessManager`] and
//! forwards to the type's [`React`] impl, which holds the logic.

mod dispatch;
mod effects;
mod step;

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::{BoxError, CommandMetadata, Error, Event, EventEnvelope, EventFilter};

pub use dispatch::{Dispatch, Refusal};
pub use effects::{Effects, ManualClock, TimerChange};
pub use step::{Step, StepInput, replay};

/// A process manager: its name, what it hears and what it sends.
///
/// Derive it (`#[derive(ProcessManager)]`) and write the logic in [`React`]; the
/// methods here are what runners call, and the derive forwards them.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a process manager",
    note = "derive it with `#[derive(ProcessManager)]` and `#[cqrs(name = \"...\", event = E, command = C)]`, and implement `cqrs_core::process::React`"
)]
pub trait ProcessManager: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable name: instances, timers and the checkpoint are stored under it.
    const NAME: &'static str;

    /// The events it hears (often an [`event_union!`](crate::event_union) of several
    /// aggregates' events).
    type Event: Event;

    /// The commands it sends (often an enum over several aggregates' commands, routed
    /// by a [`Dispatch`]). Stored until sent, so it encodes to JSON.
    type Command: Serialize + DeserializeOwned + std::fmt::Debug + Clone + Send + Sync + 'static;

    /// Which stored events to deliver. Defaults to every type name of
    /// [`Event`](ProcessManager::Event).
    fn filter() -> EventFilter {
        EventFilter::event_types(Self::Event::TYPES)
    }

    /// The instance an event belongs to, or `None` to pass it by.
    fn correlation_key(event: &EventEnvelope<Self::Event>) -> Option<String>;

    /// Reacts to an event of the instance.
    fn handle_event(
        &mut self,
        event: &EventEnvelope<Self::Event>,
        effects: &mut Effects<Self::Command>,
    );

    /// Reacts to one of the instance's timers.
    fn handle_timer(&mut self, timer: &str, effects: &mut Effects<Self::Command>);

    /// Reacts to the refusal of a command the instance sent (`reason` is the
    /// aggregate's error, as text).
    fn handle_refusal(
        &mut self,
        command: &Self::Command,
        reason: &str,
        effects: &mut Effects<Self::Command>,
    );
}

/// The logic of a process manager, which `#[derive(ProcessManager)]` forwards to.
///
/// Reactions are plain functions of the state and the input: no I/O, no clock. What
/// they decide is carried out by the runner, exactly once.
///
/// ```
/// # #![allow(dead_code)]
/// use std::time::Duration;
///
/// use cqrs_core::prelude::*;
/// use cqrs_core::process::Effects;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// enum OrderEvent {
///     Placed { order: String },
///     Paid { order: String },
/// }
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// enum Send {
///     Ship { order: String },
///     Cancel { order: String },
/// }
///
/// #[derive(Debug, Default, Serialize, Deserialize, ProcessManager)]
/// #[cqrs(name = "payment_window", event = OrderEvent, command = Send)]
/// struct PaymentWindow {
///     order: Option<String>,
/// }
///
/// impl React for PaymentWindow {
///     fn correlate(event: &EventEnvelope<OrderEvent>) -> Option<String> {
///         match &event.payload {
///             OrderEvent::Placed { order } | OrderEvent::Paid { order } => Some(order.clone()),
///         }
///     }
///
///     fn react(&mut self, event: &EventEnvelope<OrderEvent>, effects: &mut Effects<Send>) {
///         match &event.payload {
///             OrderEvent::Placed { order } => {
///                 self.order = Some(order.clone());
///                 effects.schedule("unpaid", Duration::from_secs(30 * 60));
///             }
///             OrderEvent::Paid { order } => {
///                 effects.send(Send::Ship { order: order.clone() });
///                 effects.finish();
///             }
///         }
///     }
///
///     fn on_timer(&mut self, _timer: &str, effects: &mut Effects<Send>) {
///         if let Some(order) = self.order.take() {
///             effects.send(Send::Cancel { order });
///         }
///         effects.finish();
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not react to anything",
    note = "write `impl cqrs_core::process::React for {Self}`: `correlate` and `react`, and optionally `on_timer` and `on_refused`"
)]
pub trait React: ProcessManager {
    /// The instance an event belongs to, or `None` to pass it by.
    fn correlate(event: &EventEnvelope<Self::Event>) -> Option<String>;

    /// Reacts to an event of the instance (a new instance starts from `Default`).
    fn react(&mut self, event: &EventEnvelope<Self::Event>, effects: &mut Effects<Self::Command>);

    /// Reacts to one of the instance's timers. Does nothing by default.
    fn on_timer(&mut self, timer: &str, effects: &mut Effects<Self::Command>) {
        let _ = (timer, effects);
    }

    /// Reacts to the refusal of a command the instance sent: the place for
    /// compensation. Does nothing by default.
    fn on_refused(
        &mut self,
        command: &Self::Command,
        reason: &str,
        effects: &mut Effects<Self::Command>,
    ) {
        let _ = (command, reason, effects);
    }
}

/// The command id of the `index`-th command (0-based) a reaction of manager `manager`
/// sends, the reaction's input having id `input` (the event id; the timer's id; the
/// refused command's id).
///
/// The same input always gives the same ids, so a reaction replayed after a crash sends
/// commands the pipeline recognises as already executed.
#[must_use]
pub fn command_id(manager: &str, input: Uuid, index: usize) -> Uuid {
    Uuid::new_v5(&input, format!("cqrs.process/{manager}/{index}").as_bytes())
}

/// The metadata a runner sends a process manager's command with: its derived command
/// id, the correlation id of what caused it, and the headers `process` (the manager's
/// name) and `process_key` (the instance).
#[must_use]
pub fn command_metadata(
    manager: &str,
    key: &str,
    command_id: Uuid,
    correlation_id: Option<Uuid>,
) -> CommandMetadata {
    let metadata = CommandMetadata::new()
        .with_command_id(command_id)
        .with_header("process", manager)
        .with_header("process_key", key);
    match correlation_id {
        Some(correlation_id) => metadata.with_correlation_id(correlation_id),
        None => metadata,
    }
}

/// Why a process manager's runner stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// Reading the log failed, or an event did not decode.
    #[error(transparent)]
    Store(#[from] Error),
    /// An instance's state did not encode or decode as JSON.
    #[error(
        "process manager {manager}: the state of instance {key:?} does not round-trip through JSON: {source}"
    )]
    State {
        /// The process manager.
        manager: &'static str,
        /// The instance.
        key: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// A command could not be carried out now ([`Refusal::Failed`]); it is kept and
    /// sent again.
    #[error("process manager {manager}: the command {command} could not be carried out: {source}")]
    Dispatch {
        /// The process manager.
        manager: &'static str,
        /// The command, as `Debug` shows it.
        command: String,
        /// Why.
        #[source]
        source: BoxError,
    },
}
