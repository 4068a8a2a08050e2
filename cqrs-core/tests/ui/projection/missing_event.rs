use cqrs_core::Projection;

#[derive(Debug, Default, Projection)]
#[cqrs(name = "balances")]
struct Balances {
    total: u64,
}

fn main() {}
