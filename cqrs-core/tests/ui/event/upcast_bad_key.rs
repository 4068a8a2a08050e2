use cqrs_core::Event;
use serde_json::Value;

fn upgrade(payload: Value) -> Result<Value, String> {
    Ok(payload)
}

#[derive(Debug, Event)]
enum AccountEvent {
    #[cqrs(version = 2, upcast(first = upgrade))]
    Withdrawn { amount: u64 },
}

fn main() {}
