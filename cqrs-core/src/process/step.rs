//! The history of a process instance: one [`Step`] per reaction, whose fold is its state.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{Effects, ProcessError, ProcessManager};
use crate::{Event, EventEnvelope, Metadata, Position};

/// What one reaction of an instance reacted to. An instance's steps, in order, are its
/// event stream: [`replay`] folds them into its state, as an aggregate's events are
/// folded into the aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StepInput {
    /// An event of the log, as stored (its payload at its stored schema version).
    Event {
        /// The event's id.
        event_id: Uuid,
        /// Its stream's type.
        stream_type: String,
        /// Its stream.
        stream_id: String,
        /// Its version in the stream.
        stream_version: u64,
        /// Its place in the log.
        position: Position,
        /// Its stored type name.
        event_type: String,
        /// Its stored schema version.
        schema_version: u32,
        /// Its metadata.
        metadata: Metadata,
        /// When it was recorded.
        recorded_at: DateTime<Utc>,
        /// Its payload, as stored.
        payload: Value,
    },
    /// One of the instance's timers fired.
    Timer {
        /// The timer's id (one per scheduling).
        timer_id: Uuid,
        /// Its name.
        name: String,
    },
    /// A command the instance sent was refused.
    Refused {
        /// The command's id.
        command_id: Uuid,
        /// The command, as stored.
        command: Value,
        /// The aggregate's reason.
        reason: String,
    },
}

/// One step of an instance's history: its version (1 for the first), what it reacted
/// to, and what it decided (the ids of the commands it sent, whether it finished).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// 1-based place in the instance's history.
    pub version: u64,
    /// What it reacted to.
    pub input: StepInput,
    /// The ids of the commands the reaction sent, in order.
    pub sent: Vec<Uuid>,
    /// Whether the reaction finished the process.
    pub finished: bool,
}

impl StepInput {
    /// The input of a reaction to `event`, with its payload encoded.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Store`] holding an encoding error when the payload does not
    /// encode.
    pub fn event<E: Event>(event: &EventEnvelope<E>) -> Result<Self, ProcessError> {
        Ok(Self::Event {
            event_id: event.event_id,
            stream_type: event.stream_type.clone(),
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
            position: event.position,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            metadata: event.metadata.clone(),
            recorded_at: event.recorded_at,
            payload: event
                .payload
                .encode()
                .map_err(|source| crate::Error::Encode {
                    event_type: event.payload.event_type(),
                    source: Box::new(source),
                })?,
        })
    }

    /// The id of what caused the reaction: the event's, the timer's, the refused
    /// command's.
    #[must_use]
    pub fn id(&self) -> Uuid {
        match self {
            Self::Event { event_id, .. } => *event_id,
            Self::Timer { timer_id, .. } => *timer_id,
            Self::Refused { command_id, .. } => *command_id,
        }
    }
}

/// Folds an instance's history into its state: runs each step's reaction again on the
/// state the steps before it left, from `Default`, keeping the state and dropping the
/// effects (which were carried out when the step happened). A runner keeps the state it
/// reached as a snapshot; this rebuilds it from the history alone.
///
/// # Errors
///
/// [`ProcessError::Store`] holding a decode error for an event that no longer decodes;
/// [`ProcessError::State`] for a refused command that no longer decodes.
pub fn replay<'a, P: ProcessManager>(
    key: &str,
    steps: impl IntoIterator<Item = &'a StepInput>,
) -> Result<P, ProcessError> {
    let mut state = P::default();
    for input in steps {
        let mut effects = Effects::new();
        match input {
            StepInput::Event {
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
            } => {
                let envelope = EventEnvelope {
                    event_id: *event_id,
                    stream_type: stream_type.clone(),
                    stream_id: stream_id.clone(),
                    stream_version: *stream_version,
                    position: *position,
                    event_type: event_type.clone(),
                    schema_version: *schema_version,
                    metadata: metadata.clone(),
                    recorded_at: *recorded_at,
                    payload: payload.clone(),
                };
                let event = envelope.into_decoded::<P::Event>()?;
                state.handle_event(&event, &mut effects);
            }
            StepInput::Timer { name, .. } => state.handle_timer(name, &mut effects),
            StepInput::Refused {
                command, reason, ..
            } => {
                let command: P::Command =
                    serde_json::from_value(command.clone()).map_err(|source| {
                        ProcessError::State {
                            manager: P::NAME,
                            key: key.to_owned(),
                            source,
                        }
                    })?;
                state.handle_refusal(&command, reason, &mut effects);
            }
        }
    }
    Ok(state)
}
