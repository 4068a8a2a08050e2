use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// One stored event type: its name and its current schema version.
///
/// The name is what the store records beside the payload. Renaming it orphans every
/// stored event of the old name, so rename only with an upcaster in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType {
    /// The stored type name, e.g. `"MoneyWithdrawn"`.
    pub name: &'static str,
    /// The schema version new events of this type are written with (1 or more).
    pub version: u32,
}

/// A fact that happened, recorded in an aggregate's stream.
///
/// Each event carries a stable type name and a schema version; its payload is stored as
/// JSON without the type tag (the name is stored beside it). Stored events of an older
/// schema version are *upcast* to the current shape by [`Event::decode`].
///
/// The usual way to implement it is `#[derive(Event)]`, which generates every method from
/// an enum's variants (one stored type each) or a struct, with names, versions and
/// upcasters from `#[cqrs(...)]` keys (see the `cqrs_core::derive` module). Write it by
/// hand only where the derive does not fit; the building blocks are in [`codec`], and a
/// hand-written impl looks like this:
///
/// ```
/// use cqrs_core::{CodecError, Event, EventType, codec};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// struct Deposited {
///     amount: u64,
/// }
///
/// impl Event for Deposited {
///     const TYPES: &'static [EventType] = &[EventType { name: "Deposited", version: 1 }];
///
///     fn event_type(&self) -> &'static str {
///         "Deposited"
///     }
///     fn schema_version(&self) -> u32 {
///         1
///     }
///     fn encode(&self) -> Result<serde_json::Value, CodecError> {
///         codec::encode(self)
///     }
///     fn decode(
///         event_type: &str,
///         schema_version: u32,
///         payload: serde_json::Value,
///     ) -> Result<Self, CodecError> {
///         codec::check_known::<Self>(event_type, schema_version)?;
///         codec::decode(event_type, schema_version, payload)
///     }
/// }
///
/// let payload = Deposited { amount: 5 }.encode()?;
/// assert_eq!(Deposited::decode("Deposited", 1, payload)?, Deposited { amount: 5 });
/// assert!(Deposited::decode("Withdrawn", 1, serde_json::json!({})).is_err());
/// # Ok::<(), CodecError>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event type",
    note = "add `#[derive(Event)]` to `{Self}`, or implement `cqrs_core::Event` for it"
)]
pub trait Event: Debug + Send + Sync + Sized + 'static {
    /// Every event type this type writes, with its current schema version.
    const TYPES: &'static [EventType];

    /// The stored type name of this event.
    fn event_type(&self) -> &'static str;

    /// The schema version this event is written with.
    fn schema_version(&self) -> u32;

    /// Serialises the payload (without any type tag).
    ///
    /// # Errors
    ///
    /// [`CodecError::Encode`] when serde cannot represent the value as JSON.
    fn encode(&self) -> Result<Value, CodecError>;

    /// Rebuilds an event from its stored type name, schema version and payload, upcasting
    /// older schema versions to the current shape first.
    ///
    /// # Errors
    ///
    /// [`CodecError::UnknownType`] for a name this type does not know,
    /// [`CodecError::UnknownVersion`] for a version with no upcast path,
    /// [`CodecError::Upcast`] when an upcaster refuses the payload and
    /// [`CodecError::Payload`] when the (upcast) payload does not deserialise.
    fn decode(event_type: &str, schema_version: u32, payload: Value) -> Result<Self, CodecError>;

    /// Like [`decode`](Self::decode), from the payload's JSON text: what replaying a
    /// stream uses.
    ///
    /// The default parses the text into a [`Value`] and calls `decode`. `#[derive(Event)]`
    /// deserialises a payload at the current schema version straight from the text,
    /// without building a `Value` first, and takes the `decode` path (with its upcasters)
    /// only for older versions.
    ///
    /// # Errors
    ///
    /// As for [`decode`](Self::decode); text that is not JSON is a
    /// [`CodecError::Payload`].
    fn decode_json(
        event_type: &str,
        schema_version: u32,
        payload: &str,
    ) -> Result<Self, CodecError> {
        let payload = codec::decode_json::<Value>(event_type, schema_version, payload)?;
        Self::decode(event_type, schema_version, payload)
    }

    /// The current schema version of a stored type name, if this type knows the name.
    fn current_version(event_type: &str) -> Option<u32> {
        Self::TYPES
            .iter()
            .find(|known| known.name == event_type)
            .map(|known| known.version)
    }
}

/// Why an event could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The stored type name is not one this event type knows.
    #[error("unknown event type `{event_type}`")]
    UnknownType {
        /// The stored name.
        event_type: String,
    },
    /// The stored schema version has no path to the current one (it is newer than the
    /// code, zero, or older with no upcaster declared).
    #[error("event type `{event_type}` has no upcast path from version {version} to {current}")]
    UnknownVersion {
        /// The stored name.
        event_type: String,
        /// The stored schema version.
        version: u32,
        /// The version the code reads.
        current: u32,
    },
    /// An upcaster refused the stored payload.
    #[error("upcasting `{event_type}` from version {from} failed: {reason}")]
    Upcast {
        /// The stored name.
        event_type: String,
        /// The version the failing upcaster starts from.
        from: u32,
        /// The upcaster's explanation.
        reason: String,
    },
    /// The payload does not deserialise into the current shape.
    #[error("payload of `{event_type}` v{version} does not match its type")]
    Payload {
        /// The stored name.
        event_type: String,
        /// The version the payload was read as (after upcasting).
        version: u32,
        /// serde's explanation.
        #[source]
        source: serde_json::Error,
    },
    /// The event could not be represented as JSON.
    #[error("event does not serialise to JSON")]
    Encode(#[source] serde_json::Error),
}

/// An upcaster: turns a stored payload of schema version `k` into version `k + 1`.
///
/// Return `Err` with an explanation when the payload cannot be upcast; decoding then
/// fails with [`CodecError::Upcast`].
pub type Upcaster = fn(Value) -> Result<Value, String>;

/// Building blocks for [`Event`] implementations, used by the derive and by hand-written
/// impls alike.
pub mod codec {
    use super::{CodecError, DeserializeOwned, Event, Serialize, Upcaster, Value};

    /// Serialises a payload.
    ///
    /// # Errors
    ///
    /// [`CodecError::Encode`] when serde cannot represent the value as JSON.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Value, CodecError> {
        serde_json::to_value(value).map_err(CodecError::Encode)
    }

    /// Deserialises a payload that is already at the current schema version.
    ///
    /// # Errors
    ///
    /// [`CodecError::Payload`] naming the type and version.
    pub fn decode<T: DeserializeOwned>(
        event_type: &str,
        version: u32,
        payload: Value,
    ) -> Result<T, CodecError> {
        serde_json::from_value(payload).map_err(|source| CodecError::Payload {
            event_type: event_type.to_owned(),
            version,
            source,
        })
    }

    /// Deserialises a payload's JSON text that is already at the current schema version.
    ///
    /// # Errors
    ///
    /// [`CodecError::Payload`] naming the type and version.
    pub fn decode_json<T: DeserializeOwned>(
        event_type: &str,
        version: u32,
        payload: &str,
    ) -> Result<T, CodecError> {
        serde_json::from_str(payload).map_err(|source| CodecError::Payload {
            event_type: event_type.to_owned(),
            version,
            source,
        })
    }

    /// Checks that `E` knows `event_type` at exactly `version` (no upcasting).
    ///
    /// # Errors
    ///
    /// [`CodecError::UnknownType`] or [`CodecError::UnknownVersion`].
    pub fn check_known<E: Event>(event_type: &str, version: u32) -> Result<(), CodecError> {
        match E::current_version(event_type) {
            None => Err(CodecError::UnknownType {
                event_type: event_type.to_owned(),
            }),
            Some(current) if current == version => Ok(()),
            Some(current) => Err(CodecError::UnknownVersion {
                event_type: event_type.to_owned(),
                version,
                current,
            }),
        }
    }

    /// Runs the upcaster chain on a stored payload.
    ///
    /// `upcasters[i]` turns version `first + i` into `first + i + 1`; the chain therefore
    /// reaches `current = first + upcasters.len()`. A stored `version` below `first`,
    /// above `current`, or zero has no path.
    ///
    /// ```
    /// use cqrs_core::codec::upcast;
    /// use serde_json::json;
    ///
    /// fn v1_to_v2(mut p: serde_json::Value) -> Result<serde_json::Value, String> {
    ///     p["reference"] = json!("unknown");
    ///     Ok(p)
    /// }
    ///
    /// let upgraded = upcast("MoneyWithdrawn", 1, 1, &[v1_to_v2], json!({ "amount": 5 }))?;
    /// assert_eq!(upgraded, json!({ "amount": 5, "reference": "unknown" }));
    /// assert!(upcast("MoneyWithdrawn", 3, 1, &[v1_to_v2], json!({})).is_err());
    /// # Ok::<(), cqrs_core::CodecError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`CodecError::UnknownVersion`] when there is no path, [`CodecError::Upcast`] when
    /// an upcaster refuses the payload.
    pub fn upcast(
        event_type: &str,
        version: u32,
        first: u32,
        upcasters: &[Upcaster],
        mut payload: Value,
    ) -> Result<Value, CodecError> {
        let current = first.saturating_add(u32::try_from(upcasters.len()).unwrap_or(u32::MAX));
        if version == 0 || version < first || version > current {
            return Err(CodecError::UnknownVersion {
                event_type: event_type.to_owned(),
                version,
                current,
            });
        }
        let skip = usize::try_from(version - first).unwrap_or(usize::MAX);
        for (step, upcaster) in upcasters.iter().enumerate().skip(skip) {
            payload = upcaster(payload).map_err(|reason| CodecError::Upcast {
                event_type: event_type.to_owned(),
                from: first.saturating_add(u32::try_from(step).unwrap_or(u32::MAX)),
                reason,
            })?;
        }
        Ok(payload)
    }
}
