//! A tiny domain for the tests: a counter whose `Added` event went from v1
//! (`{"n": ..}`) to v2 (`{"amount": ..}`) with an upcaster.

use cqrs_core::{Aggregate, CodecError, Command, Event, EventType, SnapshotPolicy, codec};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    pub amount: u64,
}

fn v1_to_v2(mut payload: Value) -> Result<Value, String> {
    let n = payload
        .get("n")
        .cloned()
        .ok_or_else(|| "no field `n`".to_owned())?;
    payload = serde_json::json!({ "amount": n });
    Ok(payload)
}

impl Event for Added {
    const TYPES: &'static [EventType] = &[EventType {
        name: "Added",
        version: 2,
    }];

    fn event_type(&self) -> &'static str {
        "Added"
    }

    fn schema_version(&self) -> u32 {
        2
    }

    fn encode(&self) -> Result<Value, CodecError> {
        codec::encode(self)
    }

    fn decode(event_type: &str, schema_version: u32, payload: Value) -> Result<Self, CodecError> {
        if event_type != "Added" {
            return Err(CodecError::UnknownType {
                event_type: event_type.to_owned(),
            });
        }
        let payload = codec::upcast(event_type, schema_version, 1, &[v1_to_v2], payload)?;
        codec::decode(event_type, 2, payload)
    }
}

#[derive(Debug, Clone)]
pub struct Add(pub u64);

impl Command for Add {
    fn name(&self) -> &'static str {
        "Add"
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the counter refuses to add zero")]
pub struct Refused;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub total: u64,
    pub events: u64,
}

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = Add;
    type Event = Added;
    type Error = Refused;
    type Services = ();

    fn snapshot_policy() -> SnapshotPolicy {
        SnapshotPolicy::Never
    }

    async fn handle_command(&self, command: &Add, _: &()) -> Result<Vec<Added>, Refused> {
        if command.0 == 0 {
            return Err(Refused);
        }
        Ok(vec![Added { amount: command.0 }])
    }

    fn apply_event(&mut self, event: &Added) {
        self.total += event.amount;
        self.events += 1;
    }
}
