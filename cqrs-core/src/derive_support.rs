//! Traits the derives delegate to, so that a derived type's author writes only logic.
//!
//! `#[derive(Aggregate)]` fills in [`Aggregate`]'s constants and types and forwards
//! `handle` to [`Handle<Self::Command>`](Handle) and `apply` to
//! [`Apply<Self::Event>`](Apply). `#[derive(Projection)]` forwards `handle` to
//! [`Project`]. These traits are also the extension point for commands written as
//! separate structs: each gets its own `impl Handle<ThatCommand> for TheAggregate`, and a
//! command enum derived with `#[cqrs(aggregate = TheAggregate)]` routes to them.

use std::future::Future;

use crate::{Aggregate, EventEnvelope, Projection};

/// How an aggregate decides on one command type: the business logic behind
/// [`Aggregate::handle`].
///
/// Write it as an `async fn` (a plain body is fine when there is nothing to await). It
/// must not do storage I/O: the pipeline may run it again after a concurrency conflict.
///
/// `Handle::handle` and [`Aggregate::handle`] share a name, so with both traits in scope
/// call them by path (`Aggregate::handle(&state, ..)`) rather than as methods.
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
/// let refused = Aggregate::handle(&full, &CounterCommand::Increment { by: 1 }, &()).await;
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
/// [`Aggregate::apply`]. It cannot fail: events are facts.
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

/// How a projection applies one event to its view: the logic behind
/// [`Projection::handle`].
///
/// ```
/// # #![allow(dead_code)]
/// use std::collections::HashMap;
/// use std::convert::Infallible;
///
/// use cqrs_core::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// # enum CounterEvent { Incremented { by: u64 } }
///
/// #[derive(Debug, Default, Projection)]
/// #[cqrs(name = "counter_totals", event = CounterEvent)]
/// struct Totals(HashMap<String, u64>);
///
/// impl Project for Totals {
///     async fn project(
///         &mut self,
///         _: &mut (),
///         event: &EventEnvelope<CounterEvent>,
///     ) -> Result<(), Infallible> {
///         let CounterEvent::Incremented { by } = &event.payload;
///         *self.0.entry(event.stream_id.clone()).or_default() += by;
///         Ok(())
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not project its events",
    note = "write `impl cqrs_core::Project for {Self}` applying each event to the view"
)]
pub trait Project: Projection {
    /// Applies one event to the view.
    fn project(
        &mut self,
        cx: &mut Self::Context,
        event: &EventEnvelope<Self::Event>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Support for generated code. Not public API.
#[doc(hidden)]
pub(crate) mod private {
    use std::fmt;

    use crate::{CodecError, Command, Event, EventType};

    /// Stands in for a type a derive could not read, so one error does not cascade.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Unknown {}

    impl fmt::Display for Unknown {
        fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
            match *self {}
        }
    }

    impl std::error::Error for Unknown {}

    impl Command for Unknown {
        fn name(&self) -> &'static str {
            match *self {}
        }
    }

    impl Event for Unknown {
        const TYPES: &'static [EventType] = &[];

        fn event_type(&self) -> &'static str {
            match *self {}
        }

        fn schema_version(&self) -> u32 {
            match *self {}
        }

        fn encode(&self) -> Result<serde_json::Value, CodecError> {
            match *self {}
        }

        fn decode(event_type: &str, _: u32, _: serde_json::Value) -> Result<Self, CodecError> {
            Err(unknown_type(event_type))
        }
    }

    /// The error for a stored type name the event type does not know.
    #[must_use]
    pub fn unknown_type(event_type: &str) -> CodecError {
        CodecError::UnknownType {
            event_type: event_type.to_owned(),
        }
    }

    /// The payload of an event without fields.
    #[must_use]
    pub fn empty_payload() -> serde_json::Value {
        serde_json::Value::Object(serde_json::Map::new())
    }
}
