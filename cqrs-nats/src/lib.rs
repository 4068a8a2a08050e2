//! Relaying a cqrs store's events to NATS JetStream, exactly once.
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

use std::future::Future;

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use cqrs_core::{CodecError, Event, EventEnvelope, EventFilter, EventType, Projection};
use cqrs_postgres::PgView;
use cqrs_postgres::sqlx::PgConnection;
use serde_json::Value;
use tracing::debug;

pub use consumer::{Consume, Consumer, ConsumerCounts, ConsumerError, Incoming};

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

/// Why a batch was not relayed (it is tried again).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A payload did not encode.
    #[error("the message for event {event_id} does not encode: {source}")]
    Encode {
        /// The event.
        event_id: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// JetStream refused or did not acknowledge a message.
    #[error("publishing to `{subject}` failed: {reason}")]
    Publish {
        /// The subject.
        subject: String,
        /// What the client said.
        reason: String,
    },
}

/// Publishes the events `R` routes to JetStream, exactly once: see the crate's
/// documentation. Register it with
/// [`PgProjectionRunnerBuilder::view`](cqrs_postgres::PgProjectionRunnerBuilder::view).
pub struct Relay<R> {
    jetstream: Context,
    route: R,
    batch: Vec<(String, Message)>,
}

impl<R> std::fmt::Debug for Relay<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("waiting", &self.batch.len())
            .finish_non_exhaustive()
    }
}

impl<R: Route> Relay<R> {
    /// A relay publishing through `jetstream` what `route` maps.
    pub fn new(jetstream: Context, route: R) -> Self {
        Self {
            jetstream,
            route,
            batch: Vec::new(),
        }
    }
}

impl<R: Route> Projection for Relay<R> {
    const NAME: &'static str = R::NAME;
    type Event = Raw;
    type Context = PgConnection;
    type Error = RelayError;

    fn filter() -> EventFilter {
        R::filter()
    }

    fn handle(
        &mut self,
        _: &mut PgConnection,
        event: &EventEnvelope<Raw>,
    ) -> impl Future<Output = Result<(), RelayError>> + Send {
        if let Some(message) = self.route.route(event) {
            self.batch.push((event.event_id.to_string(), message));
        }
        async { Ok(()) }
    }
}

impl<R: Route> PgView for Relay<R> {
    /// Nothing to empty: a rebuild publishes the log again, and JetStream drops what it
    /// still remembers (within its duplicate window).
    async fn reset(&mut self, _: &mut PgConnection) -> Result<(), RelayError> {
        Ok(())
    }

    /// Publishes the batch and waits for every acknowledgement, before the runner moves
    /// the checkpoint.
    async fn flush(&mut self, _: &mut PgConnection) -> Result<(), RelayError> {
        let batch = std::mem::take(&mut self.batch);
        let mut acks = Vec::with_capacity(batch.len());
        for (event_id, message) in &batch {
            let payload =
                serde_json::to_vec(&message.payload).map_err(|source| RelayError::Encode {
                    event_id: event_id.clone(),
                    source,
                })?;
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", event_id.as_str());
            let ack = self
                .jetstream
                .publish_with_headers(message.subject.clone(), headers, payload.into())
                .await
                .map_err(|error| RelayError::Publish {
                    subject: message.subject.clone(),
                    reason: error.to_string(),
                })?;
            acks.push((message.subject.clone(), ack));
        }
        let mut duplicates = 0_usize;
        for (subject, ack) in acks {
            let ack = ack.await.map_err(|error| RelayError::Publish {
                subject,
                reason: error.to_string(),
            })?;
            duplicates += usize::from(ack.duplicate);
        }
        debug!(
            published = batch.len(),
            duplicates, "relay batch acknowledged"
        );
        Ok(())
    }

    fn discard(&mut self) {
        self.batch.clear();
    }
}
