use cqrs_core::Event;

fn v1_to_v2(amount: u64) -> u64 {
    amount
}

#[derive(Debug, Event)]
enum AccountEvent {
    #[cqrs(version = 2, upcast(v1 = v1_to_v2))]
    Withdrawn { amount: u64 },
}

fn main() {}
