use cqrs_core::Event;

#[derive(Debug, Event)]
enum AccountEvent {
    Deposited { amount: u64 },
    #[serde(skip)]
    Audited,
    #[serde(skip_deserializing)]
    Flagged { reason: String },
}

fn main() {}
