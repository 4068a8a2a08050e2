//! Messages from other services as events of one's own: [`Inbox`].

use std::future::Future;

use cqrs_core::EventStore;
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_postgres::PgEventStore;
use cqrs_postgres::sqlx::PgConnection;
use uuid::Uuid;

use crate::{Consume, Incoming};

/// Which messages an [`Inbox`] takes into its store, and as which events.
pub trait InboxRoute: Send + Sync + 'static {
    /// The consumer's name (its durable JetStream consumer and its recorded position).
    const NAME: &'static str;

    /// The stream type the messages are appended under (default `inbox`): each message
    /// becomes a stream of its own, named after the message.
    const STREAM_TYPE: &'static str = "inbox";

    /// The event for `message` (its type, version and payload: the metadata is filled
    /// added to), or `None` to pass it by.
    fn event(&self, message: &Incoming) -> Option<NewEvent>;
}

/// Why a message did not enter the inbox (it is delivered again, then parked).
#[derive(Debug, thiserror::Error)]
#[error("the message could not be appended to the inbox: {0}")]
pub struct InboxError(#[source] cqrs_core::Error);

/// A [`Consume`] that appends each message, as the event its [`InboxRoute`] maps it to,
/// to the consumer's own store: the service's projections and process managers then run
/// on it like on any of its own events, through the projection runner (its checkpoints,
/// its read-your-writes, its rebuilds).
///
/// Each message is appended once: its stream is named after the message (`Nats-Msg-Id`,
/// or the JetStream stream and sequence) and the append carries a command id made from
/// the consumer's name and that key, so a redelivery after a crash returns the first
/// append instead of writing a second one. Messages are appended in the order they are
/// consumed (the stream's), so the log holds them in that order. The event's metadata
/// says where it came from: headers `nats_subject`, `nats_stream_sequence` and, when the
/// message had them, `nats_message_id` and `nats_position` (the publisher's log
/// position).
///
/// ```no_run
/// use cqrs_core::store::NewEvent;
/// use cqrs_nats::{Consumer, Inbox, InboxRoute, Incoming};
/// use cqrs_postgres::PgEventStore;
///
/// /// Placed orders, as this service's `OrderReceived` events.
/// struct Orders;
///
/// impl InboxRoute for Orders {
///     const NAME: &'static str = "shipping_orders";
///
///     fn event(&self, message: &Incoming) -> Option<NewEvent> {
///         (message.subject == "orders.placed")
///             .then(|| NewEvent::new("OrderReceived", 1, message.payload.clone()))
///     }
/// }
///
/// # async fn example(store: PgEventStore, js: async_nats::jetstream::Context) -> Result<(), Box<dyn std::error::Error>> {
/// Consumer::new(store.clone(), js, "ORDERS", Inbox::new(store, Orders)).run().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Inbox<R> {
    store: PgEventStore,
    route: R,
}

impl<R: InboxRoute> Inbox<R> {
    /// An inbox appending to `store` what `route` maps.
    pub fn new(store: PgEventStore, route: R) -> Self {
        Self { store, route }
    }
}

impl<R: InboxRoute> Consume for Inbox<R> {
    const NAME: &'static str = R::NAME;
    type Error = InboxError;

    fn apply(
        &mut self,
        _: &mut PgConnection,
        message: &Incoming,
    ) -> impl Future<Output = Result<(), InboxError>> + Send {
        let request = self.route.event(message).map(|mut event| {
            let key = message
                .message_id
                .clone()
                .unwrap_or_else(|| format!("{}-{}", message.subject, message.stream_sequence));
            let headers = &mut event.metadata.headers;
            headers.insert("nats_subject".to_owned(), message.subject.clone());
            headers.insert(
                "nats_stream_sequence".to_owned(),
                message.stream_sequence.to_string(),
            );
            if let Some(id) = &message.message_id {
                headers.insert("nats_message_id".to_owned(), id.clone());
            }
            if let Some(position) = message.position {
                headers.insert("nats_position".to_owned(), position.to_string());
            }
            let command_id = Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                format!("cqrs-nats-inbox/{}/{key}", R::NAME).as_bytes(),
            );
            AppendRequest::new(R::STREAM_TYPE, key, 0, vec![event]).with_command_id(command_id)
        });
        let store = self.store.clone();
        async move {
            if let Some(request) = request {
                store.append(request).await.map_err(InboxError)?;
            }
            Ok(())
        }
    }
}
