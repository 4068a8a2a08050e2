use cqrs_core::Event;

#[derive(Event)]
union Payload {
    amount: u64,
    count: u32,
}

fn main() {}
