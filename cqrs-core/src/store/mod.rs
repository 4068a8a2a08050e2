//! The storage contract, for backend authors: the [`EventStore`] trait and the raw forms
//! it speaks in (append requests and outcomes, events as stored, loaded streams and
//! snapshots).
//!
//! Applications seldom name these: the command pipeline ([`Cqrs`](crate::Cqrs)) and the
//! projection runners use them on their behalf. A backend implements [`EventStore`] and
//! proves it with the conformance suite in `cqrs_core::testing::conformance` (feature
//! `testing`); see the guide's page on storage backends.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

pub use crate::envelope::{NewEvent, RecordedEvent, ReplayEvent};
use crate::{Error, EventType, Position, Result};

mod atomic;

pub use atomic::{AtomicAppendOutcome, AtomicAppendRequest};

/// Appends events to one stream if it is at the expected version.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendRequest {
    /// The aggregate type owning the stream.
    pub stream_type: Cow<'static, str>,
    /// The aggregate id.
    pub stream_id: String,
    /// The version the stream must be at (0: it must not exist yet).
    pub expected_version: u64,
    /// The events, in order; at least one.
    pub events: Vec<NewEvent>,
    /// Idempotency key: when an append with this command id was already stored, the
    /// store returns that append's outcome and writes nothing.
    pub command_id: Option<Uuid>,
}

impl AppendRequest {
    /// An append of `events` to a stream expected at `expected_version`.
    pub fn new(
        stream_type: impl Into<Cow<'static, str>>,
        stream_id: impl Into<String>,
        expected_version: u64,
        events: Vec<NewEvent>,
    ) -> Self {
        Self {
            stream_type: stream_type.into(),
            stream_id: stream_id.into(),
            expected_version,
            events,
            command_id: None,
        }
    }

    /// Sets the idempotency key.
    #[must_use]
    pub fn with_command_id(mut self, command_id: Uuid) -> Self {
        self.command_id = Some(command_id);
        self
    }

    /// Checks the rules every backend enforces before writing: a non-empty stream type
    /// and id, of at most [`MAX_STREAM_TYPE_LEN`] and [`MAX_STREAM_ID_LEN`] bytes, at
    /// least one event, non-empty event types, schema versions of 1 or more, no event id
    /// twice in one request, and versions that fit in an `i64`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAppend`] or [`Error::DuplicateEventId`].
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason| Error::InvalidAppend {
            stream_type: self.stream_type.clone().into_owned(),
            stream_id: self.stream_id.clone(),
            reason,
        };
        if self.stream_type.is_empty() {
            return Err(invalid("the stream type is empty"));
        }
        if self.stream_id.is_empty() {
            return Err(invalid("the stream id is empty"));
        }
        if self.stream_type.len() > MAX_STREAM_TYPE_LEN {
            return Err(Error::InvalidAppend {
                stream_type: cut(&self.stream_type),
                stream_id: cut(&self.stream_id),
                reason: "the stream type is longer than 128 bytes",
            });
        }
        if self.stream_id.len() > MAX_STREAM_ID_LEN {
            return Err(Error::InvalidAppend {
                stream_type: cut(&self.stream_type),
                stream_id: cut(&self.stream_id),
                reason: "the stream id is longer than 1,024 bytes",
            });
        }
        if self.events.is_empty() {
            return Err(invalid("there are no events to append"));
        }
        let count = u64::try_from(self.events.len()).unwrap_or(u64::MAX);
        if self
            .expected_version
            .checked_add(count)
            .is_none_or(|last| i64::try_from(last).is_err())
        {
            return Err(invalid("the stream version would overflow"));
        }
        for (index, event) in self.events.iter().enumerate() {
            if event.event_type.is_empty() {
                return Err(invalid("an event type is empty"));
            }
            if event.schema_version == 0 {
                return Err(invalid("a schema version is 0 (versions start at 1)"));
            }
            if self.events[..index]
                .iter()
                .any(|earlier| earlier.event_id == event.event_id)
            {
                return Err(Error::DuplicateEventId {
                    event_id: event.event_id,
                });
            }
        }
        Ok(())
    }
}

/// The longest stream type an append may name, in bytes (UTF-8).
pub const MAX_STREAM_TYPE_LEN: usize = 128;

/// The longest stream id an append may name, in bytes (UTF-8). Backends index streams by
/// type and id, and an index entry has a size limit (about 2.7 KB in PostgreSQL): every
/// backend accepts ids up to this length, and [`AppendRequest::validate`] refuses longer
/// ones before they reach the storage.
pub const MAX_STREAM_ID_LEN: usize = 1024;

/// The first 64 characters of `text`, marked when cut, for an error message.
fn cut(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(64).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

/// What an append wrote (or, for a repeated command id, what the original append wrote).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Version of the first event written.
    pub first_version: u64,
    /// Version of the last event written: the stream's version after the append.
    pub stream_version: u64,
    /// Position of the last event written: wait for a projection to pass it to read this
    /// write.
    pub position: Position,
    /// `true` when the command id had already been appended: nothing was written now and
    /// the other fields describe the original append.
    pub duplicate: bool,
}

/// Narrows a read of the global log. Empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only events of streams of these types.
    pub stream_types: Vec<Cow<'static, str>>,
    /// Only events of these type names.
    pub event_types: Vec<Cow<'static, str>>,
}

impl EventFilter {
    /// Every event.
    #[must_use]
    pub fn all() -> Self {
        Self::default()
    }

    /// Only the given event types (as listed by [`Event::TYPES`](crate::Event::TYPES)).
    #[must_use]
    pub fn event_types(types: &[EventType]) -> Self {
        Self {
            stream_types: Vec::new(),
            event_types: types.iter().map(|t| Cow::Borrowed(t.name)).collect(),
        }
    }

    /// Also restricts to streams of the given type.
    #[must_use]
    pub fn and_stream_type(mut self, stream_type: impl Into<Cow<'static, str>>) -> Self {
        self.stream_types.push(stream_type.into());
        self
    }

    /// Whether an event passes the filter.
    #[must_use]
    pub fn matches(&self, stream_type: &str, event_type: &str) -> bool {
        (self.stream_types.is_empty() || self.stream_types.iter().any(|t| t == stream_type))
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
    }
}

/// An aggregate's state at a stream version, serialised.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The aggregate type.
    pub stream_type: String,
    /// The aggregate id.
    pub stream_id: String,
    /// The version of the last event folded into `state`.
    pub stream_version: u64,
    /// The aggregate's state version; snapshots of another state version are ignored.
    pub state_version: u32,
    /// The serialised state.
    pub state: Value,
}

/// A stream as loaded for a command: the latest usable snapshot and the events after it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadedStream {
    /// The newest snapshot with the requested state version, if any.
    pub snapshot: Option<Snapshot>,
    /// Events after the snapshot (or all events), in version order, with what a fold
    /// needs.
    pub events: Vec<ReplayEvent>,
}

/// The storage backend contract.
///
/// Every backend provides the same semantics, pinned by the conformance suite in
/// `cqrs_core::testing::conformance` (feature `testing`):
///
/// - **Streams** are identified by `(stream_type, stream_id)`; versions start at 1 and
///   are contiguous.
/// - **Append** is all-or-nothing. It succeeds only when the stream is at
///   `expected_version`; otherwise it fails with [`Error::Conflict`] and writes nothing.
///   Event ids are unique store-wide. An append with a `command_id` that was already
///   appended to the same stream returns the original [`AppendOutcome`] (with
///   `duplicate: true`) and writes nothing; one recorded on another stream fails with
///   [`Error::CommandIdInUse`], naming that stream, and writes nothing. Stream types and
///   ids have at most [`MAX_STREAM_TYPE_LEN`] and [`MAX_STREAM_ID_LEN`] bytes.
/// - **The global log** is read in commit order: once a reader has seen position `p`, no
///   event that becomes visible later has a position at or below `p`. So a reader that
///   remembers its position never skips an event.
/// - **Snapshots** keep the newest per stream; an older one never replaces a newer one.
///   A snapshot ahead of its stream is refused with [`Error::InvalidSnapshot`], and a
///   stored one the stream does not reach (written by something else) is ignored when a
///   command loads the stream.
///
/// The trait is object safe: `Arc<dyn EventStore>` works wherever a store is expected.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Loads the events of a stream with a version greater than `after_version`
    /// (0 loads the whole stream), in version order. A missing stream is empty.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the storage fails.
    async fn load(
        &self,
        stream_type: &str,
        stream_id: &str,
        after_version: u64,
    ) -> Result<Vec<RecordedEvent>>;

    /// Loads what a command needs: the newest snapshot of `state_version` (if any) and
    /// the events after it, as [`ReplayEvent`]s (only what a fold reads). A snapshot at a
    /// version the stream does not have is ignored (with a warning), and the whole stream
    /// returned. Backends should do this in one round trip and skip the columns a fold
    /// does not need; the default makes two calls.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the storage fails.
    async fn load_for_command(
        &self,
        stream_type: &str,
        stream_id: &str,
        state_version: u32,
    ) -> Result<LoadedStream> {
        let snapshot = self
            .load_snapshot(stream_type, stream_id)
            .await?
            .filter(|s| s.state_version == state_version && s.stream_version > 0);
        if let Some(snapshot) = snapshot {
            // From the snapshot's own version, to see that the stream has it.
            let version = snapshot.stream_version;
            let mut events = self.load(stream_type, stream_id, version - 1).await?;
            if events
                .first()
                .is_some_and(|first| first.stream_version == version)
            {
                events.remove(0);
                return Ok(LoadedStream {
                    snapshot: Some(snapshot),
                    events: events.into_iter().map(ReplayEvent::from).collect(),
                });
            }
            tracing::warn!(
                stream_type,
                stream_id,
                version,
                "the stored snapshot is ahead of its stream; ignored"
            );
        }
        let events = self.load(stream_type, stream_id, 0).await?;
        Ok(LoadedStream {
            snapshot: None,
            events: events.into_iter().map(ReplayEvent::from).collect(),
        })
    }

    /// Appends events to a stream if it is at the expected version.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when the stream is at another version,
    /// [`Error::InvalidAppend`] / [`Error::DuplicateEventId`] for a malformed request,
    /// [`Error::Backend`] when the storage fails. In every case nothing is written.
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome>;

    /// Appends to several streams as one unit: every stream at its expected version, all
    /// events in one commit, contiguous in the global log; or nothing. A stream that is
    /// not at its expected version refuses the whole unit with [`Error::Conflict`]
    /// naming it. The unit's command id, sent again, returns the original outcomes with
    /// `duplicate: true` and writes nothing; recorded by another append or unit (whose
    /// first stream differs), it is [`Error::CommandIdInUse`].
    ///
    /// The default refuses with [`Error::Unsupported`]: a backend that offers it
    /// overrides it and passes the conformance tests that check it.
    ///
    /// # Errors
    ///
    /// As above, and as for [`append`](Self::append) (an invalid request is checked with
    /// [`AtomicAppendRequest::validate`] before anything is written).
    async fn append_atomic(&self, request: AtomicAppendRequest) -> Result<AtomicAppendOutcome> {
        request.validate()?;
        Err(Error::Unsupported {
            operation: "append_atomic",
        })
    }

    /// The outcome of the append to stream `stream_type/stream_id` that carried
    /// `command_id` (with `duplicate: true`), if one was stored.
    ///
    /// # Errors
    ///
    /// [`Error::CommandIdInUse`] when the id was recorded by an append to another stream;
    /// [`Error::Backend`] when the storage fails.
    async fn find_command(
        &self,
        command_id: Uuid,
        stream_type: &str,
        stream_id: &str,
    ) -> Result<Option<AppendOutcome>>;

    /// Reads up to `limit` events of the global log after `after`, in commit order,
    /// keeping those that pass `filter`. Call again after the last returned position
    /// for the next batch; an empty batch means the reader is caught up.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] when a stored event's envelope does not convert (metadata
    /// written by something else): it names the event's
    /// [`position`](Error::Decode::position), and a reader that must go on steps over
    /// the event by reading again after that position. [`Error::Backend`] when the
    /// storage fails.
    async fn read_all(
        &self,
        after: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<Vec<RecordedEvent>>;

    /// The position of the newest event a reader can see now ([`Position::START`] for an
    /// empty log): every event up to it is readable by [`read_all`](Self::read_all).
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the storage fails.
    async fn head(&self) -> Result<Position>;

    /// The newest snapshot of a stream, whatever its state version.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the storage fails.
    async fn load_snapshot(&self, stream_type: &str, stream_id: &str) -> Result<Option<Snapshot>>;

    /// Stores a snapshot unless a snapshot at a higher stream version is already stored.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSnapshot`] when the stream has no event at the snapshot's version
    /// (the snapshot is ahead of it), or its numbers do not fit the store; nothing is
    /// stored then. [`Error::Backend`] when the storage fails.
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()>;
}

macro_rules! forward_event_store {
    ($($ptr:tt)*) => {
        #[async_trait]
        impl<S: EventStore + ?Sized> EventStore for $($ptr)*<S> {
            async fn load(
                &self,
                stream_type: &str,
                stream_id: &str,
                after_version: u64,
            ) -> Result<Vec<RecordedEvent>> {
                (**self).load(stream_type, stream_id, after_version).await
            }
            async fn load_for_command(
                &self,
                stream_type: &str,
                stream_id: &str,
                state_version: u32,
            ) -> Result<LoadedStream> {
                (**self).load_for_command(stream_type, stream_id, state_version).await
            }
            async fn append(&self, request: AppendRequest) -> Result<AppendOutcome> {
                (**self).append(request).await
            }
            async fn append_atomic(
                &self,
                request: AtomicAppendRequest,
            ) -> Result<AtomicAppendOutcome> {
                (**self).append_atomic(request).await
            }
            async fn find_command(
                &self,
                command_id: Uuid,
                stream_type: &str,
                stream_id: &str,
            ) -> Result<Option<AppendOutcome>> {
                (**self).find_command(command_id, stream_type, stream_id).await
            }
            async fn read_all(
                &self,
                after: Position,
                limit: usize,
                filter: &EventFilter,
            ) -> Result<Vec<RecordedEvent>> {
                (**self).read_all(after, limit, filter).await
            }
            async fn head(&self) -> Result<Position> {
                (**self).head().await
            }
            async fn load_snapshot(
                &self,
                stream_type: &str,
                stream_id: &str,
            ) -> Result<Option<Snapshot>> {
                (**self).load_snapshot(stream_type, stream_id).await
            }
            async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
                (**self).save_snapshot(snapshot).await
            }
        }
    };
}

forward_event_store!(Arc);
forward_event_store!(Box);
