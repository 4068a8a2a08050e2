use cqrs_core::Event;

#[derive(Debug, Event)]
enum AccountEvent {
    #[serde(rename = "deposited")]
    Deposited { amount: u64 },
    #[serde(alias = "Withdrawal")]
    Withdrawn { amount: u64 },
}

fn main() {}
