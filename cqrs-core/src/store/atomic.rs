//! Appends to several streams as one unit: all of them or none.

use std::collections::HashSet;

use uuid::Uuid;

use super::{AppendOutcome, AppendRequest};
use crate::{Error, Result};

/// Appends to several streams that land together or not at all: each stream checked
/// against its own expected version, all events written in one commit, and readers of
/// the global log seeing them together (contiguous, in one position order).
///
/// What a rule over several aggregates needs: money that leaves one account arrives in
/// the other, a reservation and the thing reserved. A command id covers the whole unit
/// (the appends themselves carry none): sent again, the unit writes nothing and returns
/// the original outcomes.
///
/// ```
/// use cqrs_core::memory::MemoryEventStore;
/// use cqrs_core::store::{AppendRequest, AtomicAppendRequest, NewEvent};
/// use cqrs_core::EventStore;
/// use serde_json::json;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryEventStore::new();
/// let debit = NewEvent::new("Withdrawn", 1, json!({ "amount": 30 }));
/// let credit = NewEvent::new("Deposited", 1, json!({ "amount": 30 }));
/// let outcomes = store
///     .append_atomic(AtomicAppendRequest::new(vec![
///         AppendRequest::new("account", "a-1", 0, vec![debit]),
///         AppendRequest::new("account", "a-2", 0, vec![credit]),
///     ]))
///     .await?;
/// assert_eq!(outcomes.len(), 2);
/// # Ok::<(), cqrs_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AtomicAppendRequest {
    /// The appends, one per stream, in the order their outcomes come back.
    pub appends: Vec<AppendRequest>,
    /// Names the unit, to make sending it again safe.
    pub command_id: Option<Uuid>,
}

impl AtomicAppendRequest {
    /// A unit of `appends`, without a command id.
    #[must_use]
    pub fn new(appends: Vec<AppendRequest>) -> Self {
        Self {
            appends,
            command_id: None,
        }
    }

    /// Names the unit with `command_id`.
    #[must_use]
    pub fn with_command_id(mut self, command_id: Uuid) -> Self {
        self.command_id = Some(command_id);
        self
    }

    /// Checks the unit as every backend must before it writes: at least one append,
    /// each one valid ([`AppendRequest::validate`]), none carrying a command id of its
    /// own, no stream twice, no event id twice.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAppend`] naming the append (the first stream for an empty unit
    /// has none: `-/-`) and the rule it broke, or [`Error::DuplicateEventId`].
    pub fn validate(&self) -> Result<()> {
        if self.appends.is_empty() {
            return Err(Error::InvalidAppend {
                stream_type: "-".to_owned(),
                stream_id: "-".to_owned(),
                reason: "an atomic append holds no append",
            });
        }
        let mut streams = HashSet::new();
        let mut event_ids = HashSet::new();
        for append in &self.appends {
            append.validate()?;
            let invalid = |reason| Error::InvalidAppend {
                stream_type: append.stream_type.clone().into_owned(),
                stream_id: append.stream_id.clone(),
                reason,
            };
            if append.command_id.is_some() {
                return Err(invalid(
                    "an append of an atomic unit carries a command id of its own: give it \
                     to the unit",
                ));
            }
            if !streams.insert((append.stream_type.as_ref(), append.stream_id.as_str())) {
                return Err(invalid("the stream appears twice in the atomic unit"));
            }
            if let Some(taken) = append.events.iter().find(|e| !event_ids.insert(e.event_id)) {
                return Err(Error::DuplicateEventId {
                    event_id: taken.event_id,
                });
            }
        }
        Ok(())
    }
}

/// The outcomes of an atomic unit, one per append in the request's order: what each
/// wrote, or for a command id already recorded, what the original unit wrote (each with
/// `duplicate: true`).
pub type AtomicAppendOutcome = Vec<AppendOutcome>;
