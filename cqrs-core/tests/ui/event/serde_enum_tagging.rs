// Payloads carry no tag, even when the enum's own serde form (derived beside) has one.
use cqrs_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Event)]
#[serde(tag = "type", content = "data")]
enum AccountEvent {
    Deposited { amount: u64 },
}

#[derive(Debug, Event)]
#[serde(untagged)]
enum OrderEvent {
    Placed { lines: u32 },
}

fn main() {}
