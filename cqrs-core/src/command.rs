use std::collections::BTreeMap;
use std::fmt::Debug;

use uuid::Uuid;

/// A request for a change to one aggregate. It may be refused.
///
/// Usually derived: `#[derive(Command)]` names each variant and can mark the field that
/// carries the aggregate id.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command type",
    note = "add `#[derive(Command)]` to `{Self}`, or implement `cqrs_core::Command` for it"
)]
pub trait Command: Debug + Send + Sync + 'static {
    /// A name for tracing and logs, e.g. `"Deposit"`.
    fn name(&self) -> &'static str;

    /// The id of the aggregate the command is for, when the command carries it.
    /// [`Cqrs::dispatch`](crate::Cqrs::dispatch) uses it.
    fn aggregate_id(&self) -> Option<&str> {
        None
    }
}

/// What the caller knows about a command beyond its content.
///
/// ```
/// use cqrs_core::CommandMetadata;
/// use uuid::Uuid;
///
/// let request_id = Uuid::new_v4();
/// let meta = CommandMetadata::new()
///     .with_command_id(request_id) // the same id twice never appends twice
///     .with_header("user", "alice");
/// assert_eq!(meta.command_id, Some(request_id));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandMetadata {
    /// Idempotency key: a command id that was already appended is not appended again; the
    /// original outcome is returned. Generated when absent (then no deduplication
    /// applies).
    pub command_id: Option<Uuid>,
    /// Correlation id for every event of the command. Generated when absent.
    pub correlation_id: Option<Uuid>,
    /// Headers copied onto every event.
    pub headers: BTreeMap<String, String>,
}

impl CommandMetadata {
    /// Empty metadata.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Metadata for a command issued in reaction to a stored event: same correlation id,
    /// and a command id derived from the event id, so reacting twice to the same event
    /// appends once. The event id is kept in the `caused_by_event` header.
    #[must_use]
    pub fn caused_by<P>(event: &crate::EventEnvelope<P>) -> Self {
        let mut headers = BTreeMap::new();
        headers.insert("caused_by_event".to_owned(), event.event_id.to_string());
        Self {
            command_id: Some(Uuid::new_v5(&event.event_id, b"cqrs.reaction")),
            correlation_id: event.metadata.correlation_id.or(Some(event.event_id)),
            headers,
        }
    }

    /// Sets the idempotency key.
    #[must_use]
    pub fn with_command_id(mut self, command_id: Uuid) -> Self {
        self.command_id = Some(command_id);
        self
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn with_correlation_id(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}
