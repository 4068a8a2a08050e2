//! Services that talk through NATS JetStream: a [`Relay`] publishes a store's events
//! as integration messages exactly once, a [`Consumer`] feeds another service's view
//! from them with exactly-once effect and in order, a [`SchemaWindow`] publishes a
//! message at two versions while consumers migrate, and a [`ConsumedPosition`] lets a
//! read wait for the writes its client made in another service.
//!
//! A [`Relay`] is a view of the PostgreSQL projection runner: it reads the store's log
//! in order, maps the events it is told to publish to integration messages (a subject
//! and a JSON payload of their own), publishes each batch to JetStream with the event's
//! id as `Nats-Msg-Id`, waits until JetStream has acknowledged every message, and only
//! then lets the runner move its checkpoint. So:
//!
//! - nothing is lost: a batch whose acknowledgements did not all arrive is not
//!   checkpointed, and is published again;
//! - nothing is delivered twice: a message published again (after a crash between the
//!   acknowledgements and the checkpoint's commit, or by a new owner) carries the same
//!   id, and JetStream drops it as a duplicate, as long as it comes within the stream's
//!   duplicate window (two minutes by default: set it above the longest outage you
//!   recover from);
//! - one process relays at a time: the runner's ownership (one owner per projection
//!   across processes, with failover) applies to the relay as to any view.
//!
//! ```no_run
//! use cqrs_core::EventEnvelope;
//! use cqrs_nats::{Message, Raw, Relay, Route};
//! use cqrs_postgres::{PgEventStore, PgProjectionRunner};
//!
//! /// Publishes placed orders on `orders.placed`, as version 1 of their own shape.
//! struct Orders;
//!
//! impl Route for Orders {
//!     const NAME: &'static str = "orders_relay";
//!
//!     fn route(&self, event: &EventEnvelope<Raw>) -> Option<Message> {
//!         (event.event_type == "OrderPlaced").then(|| {
//!             Message::new("orders.placed", serde_json::json!({
//!                 "order": event.stream_id,
//!                 "total": event.payload.payload["total"],
//!             }))
//!         })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgEventStore::connect("postgres://postgres@localhost/app").await?;
//! let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let runner = PgProjectionRunner::builder(store)
//!     .view(Relay::new(async_nats::jetstream::new(nats), Orders))
//!     .start()
//!     .await?;
//! # runner.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod consumer;
mod inbox;
mod parked;
mod position;
mod relay;
mod window;

use cqrs_core::{CodecError, Event, EventEnvelope, EventFilter, EventType};
use serde_json::Value;

pub use consumer::{Consume, Consumer, ConsumerCounts, ConsumerError, Incoming, migrate};
pub use inbox::{Inbox, InboxError, InboxRoute};
pub use parked::{ParkedMessage, parked};
pub use position::{ConsumedPosition, PositionError};
pub use relay::{Relay, RelayError};
pub use window::{SchemaWindow, WindowError};

/// The header carrying the publishing store's log position of the event a message was
/// made from (`<commit>.<sequence>`, as [`Position`](cqrs_core::Position) prints).
pub const POSITION_HEADER: &str = "Cqrs-Position";

/// The header carrying the id of the event a message was made from (a downcast copy in
/// a [`SchemaWindow`] carries its event's id here, and an id of its own as
/// `Nats-Msg-Id`).
pub const EVENT_ID_HEADER: &str = "Cqrs-Event-Id";

/// An event as stored, undecoded: what a [`Route`] maps.
#[derive(Debug, Clone, PartialEq)]
pub struct Raw {
    /// The stored type name.
    pub event_type: String,
    /// The stored schema version.
    pub schema_version: u32,
    /// The payload, as stored.
    pub payload: Value,
}

impl Event for Raw {
    /// Any name: a relay's filter comes from its [`Route`].
    const TYPES: &'static [EventType] = &[];

    fn event_type(&self) -> &'static str {
        "raw"
    }

    fn schema_version(&self) -> u32 {
        self.schema_version
    }

    fn encode(&self) -> Result<Value, CodecError> {
        Ok(self.payload.clone())
    }

    fn decode(event_type: &str, schema_version: u32, payload: Value) -> Result<Self, CodecError> {
        Ok(Self {
            event_type: event_type.to_owned(),
            schema_version,
            payload,
        })
    }
}

/// One integration message: where it goes and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The JetStream subject.
    pub subject: String,
    /// The payload, published as JSON.
    pub payload: Value,
}

impl Message {
    /// A message to `subject`.
    pub fn new(subject: impl Into<String>, payload: Value) -> Self {
        Self {
            subject: subject.into(),
            payload,
        }
    }
}

/// Which events a relay publishes, and as what.
pub trait Route: Send + Sync + 'static {
    /// The relay's name: its checkpoint is stored under it.
    const NAME: &'static str;

    /// Which stored events to read (default: all of them).
    fn filter() -> EventFilter {
        EventFilter::all()
    }

    /// The message for `event`, or `None` to pass it by.
    fn route(&self, event: &EventEnvelope<Raw>) -> Option<Message>;
}
