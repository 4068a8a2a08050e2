use cqrs_core::Event;
use serde_json::Value;

fn v2_to_v3(payload: Value) -> Result<Value, String> {
    Ok(payload)
}

#[derive(Debug, Event)]
enum AccountEvent {
    #[cqrs(version = 2, upcast(v2 = v2_to_v3))]
    Withdrawn { amount: u64 },
}

fn main() {}
