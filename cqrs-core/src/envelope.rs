use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{Error, Event};

/// A place in the global log, usable as a checkpoint and as a read-your-writes token.
///
/// Positions are ordered: a reader that has processed every event up to and including a
/// position has seen everything committed before it. They compare by `commit` first (a
/// backend's commit-order key, such as a transaction id) and `sequence` second (a
/// store-wide event number). Treat both parts as opaque: only the order and the text
/// form (`"commit.sequence"`) are stable.
///
/// ```
/// use cqrs_core::Position;
///
/// let token: Position = "42.7".parse()?;
/// assert_eq!(token, Position::new(42, 7));
/// assert_eq!(token.to_string(), "42.7");
/// assert!(Position::START < token);
/// # Ok::<(), cqrs_core::ParsePositionError>(())
/// ```
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    commit: u64,
    sequence: u64,
}

impl Position {
    /// Before the first event: reading after it reads the whole log.
    pub const START: Self = Self::new(0, 0);

    /// Makes a position from its two parts.
    #[must_use]
    pub const fn new(commit: u64, sequence: u64) -> Self {
        Self { commit, sequence }
    }

    /// The commit-order part.
    #[must_use]
    pub const fn commit(self) -> u64 {
        self.commit
    }

    /// The store-wide event number.
    #[must_use]
    pub const fn sequence(self) -> u64 {
        self.sequence
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.commit, self.sequence)
    }
}

/// A position token that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid position token `{0}`: expected `<commit>.<sequence>`")]
pub struct ParsePositionError(String);

impl FromStr for Position {
    type Err = ParsePositionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || ParsePositionError(text.chars().take(64).collect());
        let (commit, sequence) = text.split_once('.').ok_or_else(invalid)?;
        Ok(Self::new(
            commit.parse().map_err(|_| invalid())?,
            sequence.parse().map_err(|_| invalid())?,
        ))
    }
}

/// Who asked for an event and why: carried by every stored event.
///
/// The command pipeline fills it in: every event of one command carries the command's
/// correlation id (generated when the caller gives none) and the command id as its
/// causation id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Ties together everything that happened because of one original request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The id of whatever directly caused this event: for events written by the command
    /// pipeline, the command id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The command that produced this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
    /// Free-form headers (user id, tenant, trace context, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// An event as stored: where it sits, what it is, and its payload.
///
/// `P` is the payload: raw JSON ([`RecordedEvent`]) as it comes from a store, or the
/// decoded domain event after [`RecordedEvent::decode`].
#[derive(Debug, Clone, PartialEq)]
pub struct EventEnvelope<P> {
    /// Unique id of this event across the store.
    pub event_id: Uuid,
    /// The aggregate type owning the stream (e.g. `"bank_account"`).
    pub stream_type: String,
    /// The aggregate id within its type.
    pub stream_id: String,
    /// 1-based version of this event within its stream.
    pub stream_version: u64,
    /// Place in the global log.
    pub position: Position,
    /// Stored type name.
    pub event_type: String,
    /// Stored schema version (the version the payload was written with).
    pub schema_version: u32,
    /// Correlation, causation, command id and headers.
    pub metadata: Metadata,
    /// When the store recorded the event.
    pub recorded_at: DateTime<Utc>,
    /// The payload.
    pub payload: P,
}

/// An event as a store returns it, with a JSON payload.
pub type RecordedEvent = EventEnvelope<Value>;

impl RecordedEvent {
    /// Decodes the payload into a domain event, upcasting older schema versions.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] naming the stream, version and type when the event type is
    /// unknown, the version has no upcast path, or the payload does not deserialise.
    pub fn decode<E: Event>(&self) -> Result<EventEnvelope<E>, Error> {
        let payload = self.decode_payload(self.payload.clone())?;
        Ok(self.with_payload(payload))
    }

    /// Like [`decode`](Self::decode), consuming the raw event (no payload copy).
    ///
    /// # Errors
    ///
    /// As for [`decode`](Self::decode).
    pub fn into_decoded<E: Event>(self) -> Result<EventEnvelope<E>, Error> {
        self.decode_with(E::decode)
    }

    fn decode_payload<E: Event>(&self, payload: Value) -> Result<E, Error> {
        E::decode(&self.event_type, self.schema_version, payload).map_err(|source| Error::Decode {
            stream_type: self.stream_type.clone(),
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            position: Some(self.position),
            source: Box::new(source),
        })
    }
}

/// A stored event as a command's load returns it: what folding it onto an aggregate's
/// state needs, and nothing else.
///
/// [`EventStore::load_for_command`](crate::EventStore::load_for_command) returns these
/// instead of [`RecordedEvent`]s, so a backend can skip the columns a replay never reads
/// (ids, positions, metadata, timestamps), and the payload stays JSON text until
/// [`decode`](Self::decode) deserialises it straight into the event type: replaying a
/// long stream is dominated by per-event work.
///
/// ```
/// use cqrs_core::Event;
/// use cqrs_core::store::ReplayEvent;
///
/// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize, Event)]
/// struct Deposited {
///     amount: u64,
/// }
///
/// let stored = ReplayEvent {
///     stream_version: 3,
///     event_type: "Deposited".to_owned(),
///     schema_version: 1,
///     payload: r#"{"amount": 5}"#.to_owned(),
/// };
/// let event: Deposited = stored.decode("account", "a-1")?;
/// assert_eq!(event, Deposited { amount: 5 });
/// # Ok::<(), cqrs_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayEvent {
    /// Version within its stream (1-based).
    pub stream_version: u64,
    /// Stored type name.
    pub event_type: String,
    /// Stored schema version (the version the payload was written with).
    pub schema_version: u32,
    /// The payload, as JSON text.
    pub payload: String,
}

impl ReplayEvent {
    /// Decodes the payload into a domain event ([`Event::decode_json`]), upcasting older
    /// schema versions. The stream's type and id only name the event in an error.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] naming the stream, version and type when the event type is
    /// unknown, the version has no upcast path, or the payload does not deserialise.
    pub fn decode<E: Event>(self, stream_type: &str, stream_id: &str) -> Result<E, Error> {
        E::decode_json(&self.event_type, self.schema_version, &self.payload).map_err(|source| {
            Error::Decode {
                stream_type: stream_type.to_owned(),
                stream_id: stream_id.to_owned(),
                stream_version: self.stream_version,
                event_type: self.event_type,
                schema_version: self.schema_version,
                position: None,
                source: Box::new(source),
            }
        })
    }
}

impl From<RecordedEvent> for ReplayEvent {
    fn from(event: RecordedEvent) -> Self {
        Self {
            stream_version: event.stream_version,
            event_type: event.event_type,
            schema_version: event.schema_version,
            payload: event.payload.to_string(),
        }
    }
}

impl EventEnvelope<String> {
    /// Decodes an envelope whose payload is still JSON text, as a backend may read it,
    /// with [`Event::decode_json`]: like [`RecordedEvent::into_decoded`], without a
    /// [`Value`] in between for payloads at their type's current version.
    ///
    /// # Errors
    ///
    /// As for [`RecordedEvent::decode`]; text that is not JSON is a payload error.
    pub fn into_decoded_json<E: Event>(self) -> Result<EventEnvelope<E>, Error> {
        self.decode_with(|event_type, schema_version, payload: String| {
            E::decode_json(event_type, schema_version, &payload)
        })
    }
}

impl<P> EventEnvelope<P> {
    /// The same envelope around the payload `decode` makes of this one's (given the stored
    /// type and schema version); its failure is an [`Error::Decode`] naming the event.
    fn decode_with<E>(
        self,
        decode: impl FnOnce(&str, u32, P) -> Result<E, crate::CodecError>,
    ) -> Result<EventEnvelope<E>, Error> {
        let EventEnvelope {
            event_id,
            stream_type,
            stream_id,
            stream_version,
            position,
            event_type,
            schema_version,
            metadata,
            recorded_at,
            payload,
        } = self;
        match decode(&event_type, schema_version, payload) {
            Ok(payload) => Ok(EventEnvelope {
                event_id,
                stream_type,
                stream_id,
                stream_version,
                position,
                event_type,
                schema_version,
                metadata,
                recorded_at,
                payload,
            }),
            Err(source) => Err(Error::Decode {
                stream_type,
                stream_id,
                stream_version,
                event_type,
                schema_version,
                position: Some(position),
                source: Box::new(source),
            }),
        }
    }

    /// The same envelope around another payload.
    pub fn with_payload<Q>(&self, payload: Q) -> EventEnvelope<Q> {
        EventEnvelope {
            event_id: self.event_id,
            stream_type: self.stream_type.clone(),
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            position: self.position,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            metadata: self.metadata.clone(),
            recorded_at: self.recorded_at,
            payload,
        }
    }
}

/// An event to append: everything but what the store assigns (versions, position, time).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique id; [`NewEvent::new`] generates one.
    pub event_id: Uuid,
    /// Stored type name.
    pub event_type: Cow<'static, str>,
    /// Schema version of the payload (1 or more).
    pub schema_version: u32,
    /// The payload.
    pub payload: Value,
    /// Correlation, causation, command id and headers.
    pub metadata: Metadata,
}

impl NewEvent {
    /// A new event with a fresh id and empty metadata.
    pub fn new(
        event_type: impl Into<Cow<'static, str>>,
        schema_version: u32,
        payload: Value,
    ) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            event_type: event_type.into(),
            schema_version,
            payload,
            metadata: Metadata::default(),
        }
    }

    /// Encodes a domain event.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when the event does not serialise.
    pub fn from_event<E: Event>(event: &E, metadata: Metadata) -> Result<Self, Error> {
        let payload = event.encode().map_err(|source| Error::Encode {
            event_type: event.event_type(),
            source: Box::new(source),
        })?;
        Ok(Self {
            event_id: Uuid::new_v4(),
            event_type: Cow::Borrowed(event.event_type()),
            schema_version: event.schema_version(),
            payload,
            metadata,
        })
    }

    /// Replaces the metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}
