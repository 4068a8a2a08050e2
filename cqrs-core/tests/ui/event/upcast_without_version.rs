use cqrs_core::Event;
use serde_json::Value;

fn v1_to_v2(payload: Value) -> Result<Value, String> {
    Ok(payload)
}

#[derive(Debug, Event)]
enum AccountEvent {
    #[cqrs(upcast(v1 = v1_to_v2))]
    Withdrawn { amount: u64 },
}

fn main() {}
