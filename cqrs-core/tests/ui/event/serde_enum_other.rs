use cqrs_core::Event;

#[derive(Debug, Event)]
#[serde(rename = "Events", expecting = "an account event")]
enum AccountEvent {
    Deposited { amount: u64 },
}

fn main() {}
