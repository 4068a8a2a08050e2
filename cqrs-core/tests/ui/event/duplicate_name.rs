use cqrs_core::Event;

#[derive(Debug, Event)]
enum AccountEvent {
    Deposited { amount: u64 },
    #[cqrs(name = "Deposited")]
    Credited { amount: u64 },
}

fn main() {}
