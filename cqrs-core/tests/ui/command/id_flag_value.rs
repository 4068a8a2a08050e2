use cqrs_core::Command;

#[derive(Debug, Command)]
struct Deposit {
    #[cqrs(id = true)]
    account: String,
}

fn main() {}
