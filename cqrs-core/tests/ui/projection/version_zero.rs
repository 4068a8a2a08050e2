use cqrs_core::{Event, Projection};

#[derive(Debug, Event)]
enum AccountEvent {
    Deposited { amount: u64 },
}

#[derive(Debug, Default, Projection)]
#[cqrs(event = AccountEvent, version = 0)]
struct Balances {
    total: u64,
}

fn main() {}
