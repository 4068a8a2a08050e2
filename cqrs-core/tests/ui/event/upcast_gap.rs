use cqrs_core::Event;
use serde_json::Value;

fn v1_to_v2(payload: Value) -> Result<Value, String> {
    Ok(payload)
}

fn v3_to_v4(payload: Value) -> Result<Value, String> {
    Ok(payload)
}

#[derive(Debug, Event)]
enum AccountEvent {
    #[cqrs(version = 4, upcast(v1 = v1_to_v2, v3 = v3_to_v4))]
    Withdrawn { amount: u64 },
}

fn main() {}
