use std::future::Future;

use crate::{Event, EventEnvelope, EventFilter};

/// A named, versioned consumer of the global log that maintains a read model.
///
/// A runner reads the log after the projection's checkpoint, keeps the events its
/// [`filter`](Projection::filter) selects, decodes them into
/// [`Event`](Projection::Event) and calls [`handle`](Projection::handle) for each, in
/// order. What `handle` writes to is the [`Context`](Projection::Context): `()` for a
/// view held in the projection itself (the in-memory runner in [`memory`](crate::memory)),
/// a database transaction for a backend's runner, which commits the view's changes with
/// the checkpoint.
///
/// Usually derived: `#[derive(Projection)]` fills in the name, version and associated
/// types from `#[cqrs(...)]` and forwards `handle` to the view's [`Project`] impl, which
/// holds the logic.
///
/// ```
/// use std::collections::HashMap;
/// use std::convert::Infallible;
///
/// use cqrs_core::{EventEnvelope, Project, Projection};
/// # use cqrs_core::Event;
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
/// # struct Deposited { amount: u64 }
///
/// #[derive(Debug, Default, Projection)]
/// #[cqrs(name = "totals", event = Deposited)]
/// struct Totals(HashMap<String, u64>);
///
/// impl Project for Totals {
///     async fn project(
///         &mut self,
///         _: &mut (),
///         event: &EventEnvelope<Deposited>,
///     ) -> Result<(), Infallible> {
///         *self.0.entry(event.stream_id.clone()).or_default() += event.payload.amount;
///         Ok(())
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use cqrs_core::memory::{MemoryEventStore, Projector};
/// use cqrs_core::{EventStore, Metadata};
/// use cqrs_core::store::{AppendRequest, NewEvent};
///
/// let store = MemoryEventStore::new();
/// let deposits = [Deposited { amount: 5 }, Deposited { amount: 7 }]
///     .iter()
///     .map(|e| NewEvent::from_event(e, Metadata::default()))
///     .collect::<Result<Vec<_>, _>>()?;
/// store.append(AppendRequest::new("account", "a-1", 0, deposits)).await?;
///
/// let totals = Projector::new(store, Totals::default());
/// totals.catch_up().await?;
/// assert_eq!(totals.read(|view| view.0["a-1"]).await, 12);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a projection",
    note = "implement `cqrs_core::Projection` for `{Self}`"
)]
pub trait Projection: Send + 'static {
    /// Stable name; the checkpoint is stored under it.
    const NAME: &'static str;

    /// Version of the view's shape. A new version means a rebuild from the start of the
    /// log.
    const VERSION: u32 = 1;

    /// The events the projection consumes.
    type Event: Event;

    /// What `handle` writes the view to (`()` for views held in memory).
    type Context: Send + ?Sized;

    /// Why `handle` can fail. A failing event stops the projection at that event.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Which stored events to deliver. Defaults to every type name of
    /// [`Event`](Projection::Event); narrow it to stream types when two aggregates
    /// use the same event type names.
    fn filter() -> EventFilter {
        EventFilter::event_types(Self::Event::TYPES)
    }

    /// Applies one event to the view.
    fn handle(
        &mut self,
        cx: &mut Self::Context,
        event: &EventEnvelope<Self::Event>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// How a projection applies one event to its view: the logic behind
/// [`Projection::handle`], which `#[derive(Projection)]` forwards to it.
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
