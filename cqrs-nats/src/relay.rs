//! Publishing routed events to JetStream: [`Relay`].

use std::future::Future;

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use cqrs_core::{EventEnvelope, EventFilter, Projection};
use cqrs_postgres::PgView;
use cqrs_postgres::sqlx::PgConnection;
use tracing::debug;

use crate::window::Windows;
use crate::{EVENT_ID_HEADER, Message, POSITION_HEADER, Raw, Route, SchemaWindow, WindowError};

/// Why a batch was not relayed (it is tried again).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// An open [`SchemaWindow`]'s downcaster refused a message: nothing from this event
    /// on is published until the downcaster (or the route) is fixed, or the window is
    /// closed.
    #[error(
        "the schema window `{window}` cannot downcast the message of event {event_id}: {reason}"
    )]
    Downcast {
        /// The window.
        window: String,
        /// The event.
        event_id: String,
        /// What the downcaster said.
        reason: String,
    },
}

/// One message of a batch, with what its headers say.
#[derive(Debug)]
struct Outgoing {
    message_id: String,
    event_id: String,
    position: String,
    message: Message,
}

/// Publishes the events `R` routes to JetStream, exactly once: see the crate's
/// documentation. Register it with
/// [`PgProjectionRunnerBuilder::view`](cqrs_postgres::PgProjectionRunnerBuilder::view).
///
/// Every message carries the event's id as `Nats-Msg-Id` and in
/// [`EVENT_ID_HEADER`], and its log position in [`POSITION_HEADER`] (what a
/// [`ConsumedPosition`](crate::ConsumedPosition) waits on).
pub struct Relay<R> {
    jetstream: Context,
    route: R,
    windows: Windows,
    batch: Vec<Outgoing>,
}

impl<R> std::fmt::Debug for Relay<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("windows", &self.windows)
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
            windows: Windows::default(),
            batch: Vec::new(),
        }
    }

    /// Declares a [`SchemaWindow`]: while it is open, each message under its new
    /// prefix is also published, downcast, under its old prefix.
    ///
    /// # Errors
    ///
    /// [`WindowError::Duplicate`] when a window of that name is already declared.
    pub fn window(mut self, window: SchemaWindow) -> Result<Self, WindowError> {
        self.windows.declare(window)?;
        Ok(self)
    }

    /// Closes the windows named in `names` (read from configuration: closing a window
    /// is a change of configuration, not of code). Only messages relayed after the
    /// relay starts with the window closed lose their old copy.
    ///
    /// ```
    /// # use cqrs_core::EventEnvelope;
    /// # use cqrs_nats::{Message, Raw, Relay, Route, SchemaWindow};
    /// # struct Orders;
    /// # impl Route for Orders {
    /// #     const NAME: &'static str = "orders_relay";
    /// #     fn route(&self, _: &EventEnvelope<Raw>) -> Option<Message> { None }
    /// # }
    /// # async fn example(js: async_nats::jetstream::Context) -> Result<(), Box<dyn std::error::Error>> {
    /// let v1 = SchemaWindow::new("orders-v1", "orders.v2.", "orders.v1.", |v2| {
    ///     Ok::<_, String>(v2.clone())
    /// })?;
    /// // e.g. CLOSED_WINDOWS=orders-v1 once the last consumer of version 1 moved on.
    /// let closed = std::env::var("CLOSED_WINDOWS").unwrap_or_default();
    /// let relay = Relay::new(js, Orders)
    ///     .window(v1)?
    ///     .close_windows(closed.split(',').map(str::trim).filter(|n| !n.is_empty()))?;
    /// # drop(relay);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`WindowError::Unknown`] when a name is not a declared window (a typo in the
    /// configuration would otherwise leave the window open).
    pub fn close_windows<I>(mut self, names: I) -> Result<Self, WindowError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        for name in names {
            self.windows.close(name.as_ref())?;
        }
        Ok(self)
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
        let outcome = self.stage(event);
        async move { outcome }
    }
}

impl<R: Route> Relay<R> {
    /// Adds `event`'s message (and its copies in open windows) to the batch.
    fn stage(&mut self, event: &EventEnvelope<Raw>) -> Result<(), RelayError> {
        let Some(message) = self.route.route(event) else {
            return Ok(());
        };
        let event_id = event.event_id.to_string();
        let position = event.position.to_string();
        let mut copies = Vec::new();
        for window in self.windows.open() {
            match window.copy(&message) {
                None => {}
                Some(Ok(copy)) => copies.push(Outgoing {
                    message_id: format!("{event_id}:{}", window.name()),
                    event_id: event_id.clone(),
                    position: position.clone(),
                    message: copy,
                }),
                Some(Err(reason)) => {
                    return Err(RelayError::Downcast {
                        window: window.name().to_owned(),
                        event_id,
                        reason,
                    });
                }
            }
        }
        self.batch.push(Outgoing {
            message_id: event_id.clone(),
            event_id,
            position,
            message,
        });
        self.batch.append(&mut copies);
        Ok(())
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
        for out in &batch {
            let payload =
                serde_json::to_vec(&out.message.payload).map_err(|source| RelayError::Encode {
                    event_id: out.event_id.clone(),
                    source,
                })?;
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", out.message_id.as_str());
            headers.insert(EVENT_ID_HEADER, out.event_id.as_str());
            headers.insert(POSITION_HEADER, out.position.as_str());
            let ack = self
                .jetstream
                .publish_with_headers(out.message.subject.clone(), headers, payload.into())
                .await
                .map_err(|error| RelayError::Publish {
                    subject: out.message.subject.clone(),
                    reason: error.to_string(),
                })?;
            acks.push((&out.message.subject, ack));
        }
        let mut duplicates = 0_usize;
        for (subject, ack) in acks {
            let ack = ack.await.map_err(|error| RelayError::Publish {
                subject: subject.clone(),
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
