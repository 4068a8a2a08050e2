use cqrs_core::Event;

#[derive(Debug, Event)]
enum AccountEvent {
    Deposited { amount: u64 },
    #[serde(other)]
    Unknown,
}

fn main() {}
