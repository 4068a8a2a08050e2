//! Read models kept as one plain Rust value per key: written once, run by every runner,
//! queried the same way on every backend.

mod query;

pub use query::{Comparison, Direction, DocumentQuery, Field, Filter, Order, QueryError, Scalar};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Event, EventEnvelope, EventFilter};

/// A read model kept as one document per key: plain Rust data, folded from events, with
/// no storage code.
///
/// Written once, it runs unchanged under every runner: in memory as
/// [`memory::Documents`](crate::memory::Documents) (under a
/// [`Projector`](crate::memory::Projector)), and on a backend as its document view (on
/// PostgreSQL `cqrs_postgres::PgDocumentView`, under the projection runner or inline in
/// the append's transaction). So the view tested in memory is the view served in
/// production.
///
/// Each event the view wants is folded into the document of its [`key`](Self::key) (by
/// default the event's stream id: one document per aggregate), starting from `Default`.
///
/// ```
/// use cqrs_core::memory::{Documents, MemoryEventStore, Projector};
/// use cqrs_core::prelude::*;
/// use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// # enum AccountEvent { Opened { owner: String }, Deposited { amount: u64 } }
///
/// #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
/// struct AccountSummary {
///     owner: String,
///     balance: u64,
/// }
///
/// impl Document for AccountSummary {
///     const NAME: &'static str = "account_summaries";
///     type Event = AccountEvent;
///
///     fn apply(&mut self, event: &EventEnvelope<AccountEvent>) {
///         match &event.payload {
///             AccountEvent::Opened { owner } => self.owner.clone_from(owner),
///             AccountEvent::Deposited { amount } => self.balance += amount,
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use cqrs_core::store::{AppendRequest, NewEvent};
/// let store = MemoryEventStore::new();
/// let summaries = Projector::new(store.clone(), Documents::<AccountSummary>::default());
/// # let events = [AccountEvent::Opened { owner: "Ada".into() }, AccountEvent::Deposited { amount: 5 }]
/// #     .iter().map(|e| NewEvent::from_event(e, Metadata::default())).collect::<Result<Vec<_>, _>>()?;
/// # let outcome = store.append(AppendRequest::new("account", "a-1", 0, events)).await?;
/// summaries.wait_for::<Documents<AccountSummary>>(outcome.position, std::time::Duration::from_secs(1)).await?;
/// let ada = summaries.read(|view| view.get("a-1").cloned()).await;
/// assert_eq!(ada, Some(AccountSummary { owner: "Ada".into(), balance: 5 }));
/// # Ok(())
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a document",
    note = "implement `cqrs_core::Document` for `{Self}`: a name, the event type, and `apply`"
)]
pub trait Document: Serialize + DeserializeOwned + Default + Send + Sync + 'static {
    /// The view's name: its projection's [`NAME`](crate::Projection::NAME), and on a
    /// database the name readers query it by. Lowercase ASCII letters, digits and `_`, at
    /// most 48 characters, for every backend to take it as a table name.
    const NAME: &'static str;

    /// The documents' shape. A new version is built beside the served one, from the
    /// start of the log, and replaces it once caught up.
    const VERSION: u32 = 1;

    /// The events folded into documents.
    type Event: Event;

    /// Which stored events to fold. Defaults to every type name of
    /// [`Event`](Self::Event).
    fn filter() -> EventFilter {
        EventFilter::event_types(Self::Event::TYPES)
    }

    /// The document an event belongs to; `None` ignores the event. Defaults to the
    /// event's stream id.
    fn key(event: &EventEnvelope<Self::Event>) -> Option<String> {
        Some(event.stream_id.clone())
    }

    /// Fields queries filter or order by often: a backend that indexes keeps an index on
    /// each (on PostgreSQL, created with the view's table). Paths as for [`Field`].
    /// None by default.
    const INDEXES: &'static [&'static str] = &[];

    /// Folds one event into the document.
    fn apply(&mut self, event: &EventEnvelope<Self::Event>);
}
